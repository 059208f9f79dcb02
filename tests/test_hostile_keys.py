"""Hostile or broken key files: a clear message naming the file and the ssh-keygen fix, exit 1, never a
stack trace, nothing followed through a link, nothing adopted from another user."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from k8s_specs import KNOWN_HOSTS, platform
from typer.testing import CliRunner

from airflow_gitops import keystore
from airflow_gitops.cli import app
from airflow_gitops.errors import PlatformError

runner = CliRunner()


def _render(tmp_path, extra: dict | None = None):
    import yaml

    data = platform(tmp_path)
    for k, v in (extra or {}).items():
        data.setdefault(k, {}).update(v)
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(data))
    return runner.invoke(app, ["render", "-f", str(tmp_path / "platform.yaml"), "--out", str(tmp_path / "out")])


def _passphrase_key(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(path)], check=True)


def _garbage(path):
    path.write_bytes(os.urandom(300))
    path.chmod(0o600)


def _public_half(path):
    path.write_text("ssh-ed25519 AAAAC3Nza x\n")
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("case", "make", "saw", "fix"),
    [
        ("passphrase", _passphrase_key, "protected by a passphrase", "ssh-keygen -p -N ''"),
        (
            "garbage",
            lambda p: (p.write_bytes(os.urandom(300)), p.chmod(0o600)),
            "not a usable",
            "ssh-keygen -t ed25519",
        ),
        (
            "public-half",
            lambda p: (p.write_text("ssh-ed25519 AAAAC3Nza x\n"), p.chmod(0o600)),
            "not a usable",
            "private half",
        ),
        ("directory", lambda p: p.mkdir(), "is not a regular file", "remove"),
    ],
)
def test_render_with_a_bad_deploy_key_is_one_clear_message(tmp_path, case, make, saw, fix):
    make(tmp_path / "deploy_key")
    result = _render(tmp_path)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and saw in result.output and fix in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_init_deploy_key_with_a_passphrase_key_in_place_is_one_clear_message(tmp_path):
    _passphrase_key(tmp_path / "deploy_key")
    result = runner.invoke(app, ["init", str(tmp_path), "--deploy-key"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "passphrase" in result.output and "ssh-keygen -p" in result.output


def test_a_symlinked_key_file_is_refused_not_followed(tmp_path):
    target = tmp_path / "elsewhere" / "id_ed25519"
    target.parent.mkdir()
    target.write_text("precious\n")
    target.chmod(0o644)
    (tmp_path / "deploy_key").symlink_to(target)
    result = _render(tmp_path)
    assert result.exit_code == 1 and "is a symbolic link" in result.output, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "the link's target was chmodded"
    assert not (tmp_path / "out").exists()


def test_a_symlinked_generated_key_is_refused_too(tmp_path):
    secrets_dir = tmp_path / "state" / "secrets"
    secrets_dir.mkdir(parents=True)
    (tmp_path / "other").write_text("not a key\n")
    (secrets_dir / keystore.FERNET_KEY).symlink_to(tmp_path / "other")
    with pytest.raises(PlatformError, match="symbolic link"):
        keystore.ensure(secrets_dir / keystore.FERNET_KEY, lambda: "new")
    assert (tmp_path / "other").read_text() == "not a key\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path):
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.chown(key, 65534, 65534)  # nobody
    result = _render(tmp_path)
    assert result.exit_code == 1 and "owned by another user" in result.output, result.output


def test_garbage_known_hosts_never_reaches_the_chart_values(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "deploy_key")], check=True)
    result = _render(tmp_path)
    assert result.exit_code == 0, result.output
    (tmp_path / "known_hosts").write_text(KNOWN_HOSTS + "$(rm -rf /) injected\n")
    result = runner.invoke(app, ["render", "-f", str(tmp_path / "platform.yaml"), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 1 and "line 2 is not a known_hosts entry" in result.output, result.output


def test_keys_are_created_0600_from_the_first_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)  # the process umask is whatever the user has
    old = os.umask(0)
    try:
        keystore.write_private(tmp_path / "secrets" / "k", "v")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secrets" / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


@pytest.mark.parametrize("content", ["", "\n", "not-a-key\n", "Zm9v\n", ","])
def test_an_empty_or_invalid_fernet_key_file_is_refused(tmp_path, content):
    """An empty fernet.key made Airflow store Connections unencrypted: refused, naming the file and the fix."""
    spec_dir = tmp_path / "state" / "secrets"
    spec_dir.mkdir(parents=True, mode=0o700)
    (spec_dir / keystore.FERNET_KEY).write_text(content)
    (spec_dir / keystore.FERNET_KEY).chmod(0o600)
    result = _render(tmp_path, {"local": {"state_dir": str(tmp_path / "state")}})
    assert result.exit_code == 1, result.output
    assert str(spec_dir / keystore.FERNET_KEY) in result.output and "Traceback" not in result.output
    assert "backup" in result.output, result.output
    assert (spec_dir / keystore.FERNET_KEY).read_text() == content  # never replaced behind the user's back


def test_an_empty_key_file_is_refused_not_used(tmp_path):
    path = tmp_path / "secrets" / keystore.JWT_SECRET
    keystore.write_private(path, "\n")
    with pytest.raises(PlatformError) as err:
        keystore.ensure(path, lambda: "generated")
    assert str(path) in err.value.problem and "empty" in err.value.problem and str(path) in err.value.fix


def test_write_private_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path):
    """Seen with strace (a real trace of the real calls, no mock): without the fsyncs a crash right after the
    rename can leave an empty key file."""
    import shutil
    import sys

    if not shutil.which("strace"):
        reason = "strace not installed (apt-get install strace)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    target = tmp_path / "secrets" / "k"
    trace = tmp_path / "trace"
    code = f"import pathlib, airflow_gitops.keystore as k; k.write_private(pathlib.Path({str(target)!r}), 'x')"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            code,
        ],
        check=True,
    )
    calls = [ln.split(None, 1)[1] for ln in trace.read_text().splitlines() if "(" in ln]
    renames = [i for i, c in enumerate(calls) if c.startswith("rename") and str(target) in c]
    assert len(renames) == 1, calls
    syncs = [i for i, c in enumerate(calls) if c.startswith(("fsync", "fdatasync"))]
    assert [i for i in syncs if i < renames[0]] and [i for i in syncs if i > renames[0]], calls
