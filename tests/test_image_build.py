"""`airflow-gitops image build`: the users' Dockerfile built with buildah, no Docker daemon, on the test
base of scripts/kube-images.sh (Debian's packages, no registry), then run: `airflow version` in it shows
the version of uv.lock. Slow (marker ``images``): the base takes ~45 s and the pip install ~40 s on a
first run, seconds when cached (the base by its hash, the pip layer by buildah's --layers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("airflow-gitops")
SCRIPT = REPO / "scripts" / "kube-images.sh"
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "umoci": "umoci", "skopeo": "skopeo"}

pytestmark = pytest.mark.images


def _lock_version(name: str) -> str:
    """The version uv.lock pins (read here, not through the code under test)."""
    for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]:
        if p["name"] == name:
            return p["version"]
    raise AssertionError(f"{name} not in uv.lock")


def _need_tools() -> None:
    missing = [pkg for exe, pkg in TOOLS.items() if shutil.which(exe) is None]
    if missing:
        reason = f"the image tests need {', '.join(missing)}: apt-get install -y {' '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def base_image() -> dict[str, str]:
    """The test base (built once, then cached by scripts/kube-images.sh) and the buildah storage it uses."""
    _need_tools()
    proc = subprocess.run(["bash", str(SCRIPT), "base"], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    name_path, ref = line.split(" REF=")
    name, docker_archive = name_path.split("=", 1)
    assert name == "base" and ref.startswith("localhost/airflow-gitops/base:")
    folder = Path(docker_archive).parent
    images = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        "oci": str(folder / "image.oci.tar"),
        "docker": docker_archive,
        "ref": ref,
        "storage_conf": str(Path(images) / "storage.conf"),
    }


def _platform(tmp: Path, **image) -> Path:
    data = {"image": {"repository": "localhost/airflow-gitops/test-airflow", "tag": "t-image-build", **image}}
    path = tmp / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, env=env or dict(os.environ), timeout=timeout
    )


def test_base_image_config(base_image):
    """The base: the official image's user, home, AIRFLOW_HOME and entrypoint; its docker-archive is named."""
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{base_image['oci']}"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["config"]
    assert config["User"] == "50000:0"
    assert "AIRFLOW_HOME=/opt/airflow" in config["Env"]
    assert config["Entrypoint"] == ["/usr/bin/dumb-init", "--", "/entrypoint"]
    manifest = subprocess.run(
        ["tar", "-xOf", base_image["docker"], "manifest.json"], capture_output=True, text=True, check=True
    )
    assert json.loads(manifest.stdout)[0]["RepoTags"] == [base_image["ref"]]


def test_a_base_with_another_python_stops_the_build_naming_the_python_to_set(base_image, tmp_path):
    """The pins are for image.python; on a base with another Python (the test base has Debian's 3.11.2) the
    Dockerfile's first RUN stops the build before pip, and the one message says what to set."""
    spec = _platform(tmp_path, python="3.11.9", extra_requirements=["boto3"])
    out, archive = tmp_path / "rendered", tmp_path / "airflow.oci.tar"
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": base_image["storage_conf"]}
    base = f"oci-archive:{base_image['oci']}"
    proc = _cli(["image", "build", "-f", str(spec), "-o", str(out), "--base", base, "--output", str(archive)], env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())  # the console may wrap the message
    assert "the base image has Python 3.11.2, platform.yaml has image.python 3.11.9" in said, said
    assert "set image.python to 3.11.2" in said, said
    assert "RUN pip install" not in (out / "image-build.log").read_text()  # stopped before the install step
    assert not archive.exists()


def test_image_build_on_the_test_base_runs_airflow(base_image, tmp_path):
    spec = _platform(tmp_path, extra_requirements=["boto3"])
    out, archive = tmp_path / "rendered", tmp_path / "airflow.oci.tar"
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": base_image["storage_conf"]}
    base = f"oci-archive:{base_image['oci']}"
    proc = _cli(["image", "build", "-f", str(spec), "-o", str(out), "--base", base, "--output", str(archive)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # The folder is the one `render` writes: the users' Dockerfile, only its base swapped by a build arg.
    dockerfile = (out / "image" / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=apache/airflow:{_lock_version('apache-airflow')}-python3.11" in dockerfile
    assert f"BASE_IMAGE={base}" in (out / "image-build.log").read_text()

    inspect = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{archive}"], capture_output=True, text=True
    )
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)["config"]
    assert config["User"] == "airflow"  # the Dockerfile's USER airflow
    assert "AIRFLOW_HOME=/opt/airflow" in config["Env"]
    assert config["Entrypoint"] == ["/usr/bin/dumb-init", "--", "/entrypoint"]
    index = json.loads(subprocess.run(["tar", "-xOf", str(archive), "index.json"], capture_output=True).stdout)
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == ["localhost/airflow-gitops/test-airflow:t-image-build"]

    # Run it: the entrypoint passes `version` to airflow, and `python` through; the versions are uv.lock's.
    name = f"test-image-build-{uuid.uuid4().hex[:8]}"
    buildah = ["buildah"]
    subprocess.run([*buildah, "from", "--name", name, f"oci-archive:{archive}"], capture_output=True, check=True)
    try:
        run = [*buildah, "run", "--isolation", "chroot", "--env", "CONNECTION_CHECK_MAX_COUNT=0", name, "--"]
        version = subprocess.run(
            [*run, "/usr/bin/dumb-init", "--", "/entrypoint", "version"], capture_output=True, text=True
        )
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip().splitlines()[-1] == _lock_version("apache-airflow")
        probe = "import boto3, getpass, os; print(boto3.__version__, getpass.getuser(), os.getuid(), os.getgid())"
        py = subprocess.run([*run, "/entrypoint", "python", "-c", probe], capture_output=True, text=True)
        assert py.returncode == 0, py.stderr
        assert py.stdout.split() == [_lock_version("boto3"), "airflow", "50000", "0"]
        sh = subprocess.run([*run, "/entrypoint", "bash", "-c", "exec airflow version"], capture_output=True, text=True)
        assert sh.returncode == 0 and sh.stdout.strip() == _lock_version("apache-airflow"), sh.stderr
    finally:
        subprocess.run([*buildah, "rm", name], capture_output=True)


def test_image_build_without_buildah_is_one_clear_error(tmp_path):
    """A machine without buildah: one message naming the package, no stack trace, nothing written."""
    spec = _platform(tmp_path)
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "bin")}
    proc = _cli(["image", "build", "-f", str(spec), "-o", str(tmp_path / "rendered")], env, timeout=120)
    assert proc.returncode == 1
    assert "buildah is not installed" in proc.stderr and "apt-get install buildah" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "rendered").exists()


def test_image_build_failure_shows_the_log_tail(tmp_path):
    """A base that cannot be had: one message with the end of buildah's log and where the whole log is."""
    _need_tools()
    spec = _platform(tmp_path)
    out = tmp_path / "rendered"
    missing = tmp_path / "no-such-base.oci.tar"
    proc = _cli(["image", "build", "-f", str(spec), "-o", str(out), "--base", f"oci-archive:{missing}"], timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    err = proc.stderr
    assert "building localhost/airflow-gitops/test-airflow:t-image-build" in err and "failed" in err
    assert f"FROM oci-archive:{missing}" in err  # the tail of buildah's own log
    log = out / "image-build.log"
    assert f"Log: {log.resolve()}" in err and log.is_file()
    assert not (out / "image.oci.tar").exists()
