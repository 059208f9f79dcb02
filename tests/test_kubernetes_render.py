"""The Kubernetes target's `render`: values.yaml against the official chart's schema, Secrets against the
Kubernetes schemas (kubernetes-validate --strict, warnings fail too), no key material anywhere it may
be seen, the image pinned from uv.lock, and a hypothesis property over generated specs."""

from __future__ import annotations

import json
import os
import platform as pyplatform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s_specs import CHART_TGZ, DB_URL, KNOWN_HOSTS, platform, shared_file, spec_in
from typer.testing import CliRunner

from airflow_gitops.cli import app
from airflow_gitops.dburl import encoded as metadata_connection
from airflow_gitops.errors import PlatformError
from airflow_gitops.kubernetes.render import render
from airflow_gitops.spec import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[1]


def chart_schema() -> dict:
    return json.loads(shared_file("reference/airflow-helm-chart-1.21.0/values.schema.json").read_text())


def validate_k8s(*files: Path) -> None:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*cmd, "--strict", *map(str, files)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "WARN" not in out and "ERROR" not in out, out


@pytest.mark.parametrize("delivery", ["git-sync", "bundle"])
def test_kubernetes_values_validate_against_chart_schema(tmp_path, delivery):
    schema = chart_schema()
    r = render(spec_in(tmp_path, delivery=delivery), tmp_path / "out")
    values = yaml.safe_load((tmp_path / "out" / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    assert values["executor"] == "KubernetesExecutor"
    assert values["postgresql"] == {"enabled": False}
    assert values["data"] == {"metadataSecretName": "airflow-metadata"}
    assert values["fernetKeySecretName"] and values["jwtSecretName"] and values["apiSecretKeySecretName"]
    assert values["config"]["core"] == {
        "load_examples": "False",
        "dags_are_paused_at_creation": "False",
        # explicit: the login (createUserJob) is FAB's, with our generated password
        "auth_manager": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
    }
    assert values["logs"]["persistence"] == {"enabled": True, "existingClaim": "airflow-logs"}
    assert values["ingress"]["apiServer"]["hosts"][0]["name"] == "airflow.example.com"
    assert values["volumeMounts"][0] == {"name": "aws-credentials", "mountPath": "/home/airflow/.aws", "readOnly": True}
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env == {
        "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc:5000",
        "MLFLOW_EXPERIMENT_NAME": "airflow-gitops",
        "MLOPS_REGISTERED_MODEL": "mlops-classifier",
        "MLOPS_DATA_BUCKET": "mlops-data",
        "AWS_PROFILE": "default",
        "AWS_DEFAULT_REGION": "ap-northeast-2",
        "AWS_ENDPOINT_URL": "https://s3.example.com",
        # the template pipeline's `served` task waits there (the serving Service: release-serving, port 80)
        "MLOPS_SERVING_URL": "http://airflow-serving.airflow.svc",
    }
    if delivery == "git-sync":
        gs = values["dags"]["gitSync"]
        assert gs["ref"] == gs["branch"] == "release" and gs["rev"] == "HEAD"
        assert gs["subPath"] == "pipelines/dags" and gs["period"] == "10s" and gs["depth"] == 1
        assert gs["sshKeySecret"] == "airflow-git-ssh" and gs["knownHosts"] == KNOWN_HOSTS
    else:
        assert values["dags"]["gitSync"] == {"enabled": False}
        (bundle,) = values["dagProcessor"]["dagBundleConfigList"]
        assert bundle["classpath"] == "airflow.providers.git.bundles.git.GitDagBundle"
        assert bundle["kwargs"]["tracking_ref"] == "release" and bundle["kwargs"]["subdir"] == "pipelines/dags"
        assert values["secret"][0]["envName"] == "AIRFLOW_CONN_AIRFLOW_GITOPS_DAGS"
    assert r.warnings == [
        w
        for w in r.warnings
        if "aws.credentials_file" in w or "has no TLS" in w or "no podTemplate" in w or "moving tag" in w
    ]


@pytest.mark.parametrize("delivery", ["git-sync", "bundle"])
def test_kubernetes_manifests_pass_kubernetes_validate_strict(tmp_path, delivery):
    render(spec_in(tmp_path, delivery=delivery), tmp_path / "out")
    out = tmp_path / "out"
    validate_k8s(out / "secrets.yaml", out / "manifests.yaml")
    assert (out / "secrets.yaml").stat().st_mode & 0o777 == 0o600
    assert "secrets.yaml" in (out / ".gitignore").read_text()
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((out / "secrets.yaml").read_text())}
    assert set(secrets["airflow-fernet-key"]["stringData"]) == {"fernet-key"}
    assert secrets["airflow-metadata"]["stringData"]["connection"] == DB_URL.replace("ss:w/rd", "ss%3Aw%2Frd")
    assert set(secrets["airflow-git-ssh"]["stringData"]) >= {"gitSshKey", "known_hosts"}
    assert "OPENSSH PRIVATE KEY" in secrets["airflow-git-ssh"]["stringData"]["gitSshKey"]
    assert set(secrets["aws-credentials"]["stringData"]) == {"credentials", "config"}
    assert set(secrets["airflow-api-secret-key"]["stringData"]) == {"api-secret-key"}
    assert set(secrets["airflow-jwt-secret"]["stringData"]) == {"jwt-secret"}
    pvc = [d for d in yaml.safe_load_all((out / "manifests.yaml").read_text()) if d["kind"] != "Namespace"][0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    if delivery == "bundle":
        conn = json.loads(secrets["airflow-git-ssh"]["stringData"]["connection"])
        assert conn["host"] == "git@github.com:org/airflow-dags.git"
        assert conn["extra"]["strict_host_key_checking"] == "yes"
        assert conn["extra"]["known_hosts_file"].endswith("/known_hosts")


def test_kubernetes_key_material_is_reused_not_regenerated(tmp_path):
    spec = spec_in(tmp_path)
    first = render(spec, tmp_path / "a").secrets.values()
    second = render(spec, tmp_path / "b").secrets.values()
    assert first == second
    assert (tmp_path / ".airflow-gitops" / "secrets" / "fernet.key").stat().st_mode & 0o777 == 0o600


def test_kubernetes_no_key_material_in_values_or_cli_output(tmp_path, monkeypatch):
    data = platform(tmp_path, delivery="bundle")
    aws_secret = secrets.token_urlsafe(30)  # generated: no credential-looking text is committed
    (tmp_path / "creds").write_text(
        f"[default]\naws_access_key_id = AKIAEXAMPLEKEY123456\naws_secret_access_key = {aws_secret}\n"
    )
    data["aws"]["credentials_file"] = "creds"
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["render", "--target", "kubernetes", "--out", "rendered"])
    assert result.exit_code == 0, result.output
    spec = parse_spec(data, base_dir=tmp_path)
    from airflow_gitops.kubernetes.manifests import build_secrets

    bundle = build_secrets(spec)
    secret_values = [v for v in bundle.values() if v.strip()]
    pieces = set()
    for val in secret_values:
        pieces.add(val.strip())
        pieces.update(line.strip() for line in val.splitlines() if len(line.strip()) > 15 and "PRIVATE KEY" not in line)
    pieces |= {"AKIAEXAMPLEKEY123456", aws_secret, "p%40ss%3Aw%2Frd", "p@ss:w/rd"}
    values_text = (tmp_path / "rendered" / "values.yaml").read_text()
    seen = result.output + values_text + (tmp_path / "rendered" / "NOTES.md").read_text()
    leaks = [p for p in pieces if p in seen]
    assert not leaks, f"key material leaked: {[p[:6] + '...' for p in leaks]}"
    assert "ssh-ed25519 " in result.output  # the public half is printed
    assert "Deploy key" in result.output


def _lock_for(python_full: str) -> dict[str, str]:
    """The lock's version of every package for CPython ``python_full`` on Linux (read independently of image.py)."""
    from packaging.markers import Marker

    env = {"python_full_version": python_full, "python_version": python_full.rsplit(".", 1)[0], "sys_platform": "linux"}
    out = {}
    for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]:
        markers = p.get("resolution-markers")
        if "version" in p and (not markers or any(Marker(m).evaluate(env) for m in markers)):
            out[p["name"]] = p["version"]
    return out


def test_kubernetes_image_pins_every_package_from_uv_lock(tmp_path):
    render(spec_in(tmp_path), tmp_path / "out")
    lock = _lock_for(pyplatform.python_version())
    image_dir = tmp_path / "out" / "image"
    dockerfile = (image_dir / "Dockerfile").read_text()
    # The Python the local platform and these tests run: the lock's versions for it are the tested ones.
    # Its base is a build argument whose default is the official image (docker build image/ builds on it).
    official = f"apache/airflow:{lock['apache-airflow']}-python{sys.version_info.major}.{sys.version_info.minor}"
    lines = dockerfile.splitlines()
    assert f"ARG BASE_IMAGE={official}" in lines
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    assert lines.index(f"ARG BASE_IMAGE={official}") < lines.index("FROM ${BASE_IMAGE}")
    assert "-r /tmp/requirements.txt -c /tmp/constraints.txt" in dockerfile
    text = (image_dir / "requirements.txt").read_text()
    reqs = dict(t.split("==") for t in text.split() if "==" in t)
    # each pin carries the sha256 of its files as uv.lock records them; pip installs with --require-hashes
    assert "--require-hashes -r /tmp/requirements.txt" in dockerfile
    blocks = {
        b.split(" ")[0]: set(re.findall(r"--hash=(sha256:[0-9a-f]{64})", b))
        for b in re.split(r"\n(?=\S)", text.strip())  # a pin, then its indented --hash lines
    }
    assert len(blocks) == len(reqs) and all(blocks.values()), [k for k, v in blocks.items() if not v]
    entries = tomllib.loads((REPO / "uv.lock").read_text())["package"]
    for pin in ("apache-airflow", "numpy", "boto3", "mlflow"):
        entry = next(e for e in entries if e["name"] == pin and e.get("version") == reqs[pin])
        want = {w["hash"] for w in entry.get("wheels", [])} | ({entry["sdist"]["hash"]} if "sdist" in entry else set())
        assert blocks[f"{pin}=={reqs[pin]}"] == want, pin
    # the five named packages and what they pull in (mlflow -> sqlalchemy, pandas -> numpy, boto3 -> botocore ...)
    assert {"mlflow", "pandas", "pyarrow", "scikit-learn", "boto3", "sqlalchemy", "numpy", "botocore"} <= set(reqs)
    assert {n: v for n, v in reqs.items() if lock.get(n) != v} == {}
    cons = dict(ln.split("==") for ln in (image_dir / "constraints.txt").read_text().splitlines() if "==" in ln)
    assert {n: v for n, v in cons.items() if lock.get(n) != v} == {} and len(cons) > 200


def test_kubernetes_image_requirements_resolve_to_exactly_the_lock(tmp_path):
    """What pip would install in the image: resolve requirements + constraints (uv's resolver against
    the package index) and find no version that differs from uv.lock."""
    render(spec_in(tmp_path), tmp_path / "out")
    image_dir = tmp_path / "out" / "image"
    lock = _lock_for(pyplatform.python_version())
    proc = _compile_for(image_dir, f"{sys.version_info.major}.{sys.version_info.minor}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved = dict(line.split("==") for line in proc.stdout.split() if "==" in line)
    assert len(resolved) > 100
    assert {n: (v, lock.get(n)) for n, v in resolved.items() if lock.get(n) != v} == {}


def test_kubernetes_image_for_another_python_warns_with_the_drifting_packages(tmp_path):
    other = "3.12" if pyplatform.python_version().startswith("3.11") else "3.11"
    r = render(spec_in(tmp_path, image={"python": other}), tmp_path / "out")
    (warning,) = [w for w in r.warnings if "image.python" in w]
    assert "numpy" in warning and "set image.python to match" in warning


def test_kubernetes_render_errors_are_clear(tmp_path):
    with pytest.raises(PlatformError, match="database.url is not set"):
        render(parse_spec({"dags": {"repo": "https://github.com/o/r.git"}}, base_dir=tmp_path), tmp_path / "o")
    with pytest.raises(PlatformError, match="dags.repo is not set"):
        render(parse_spec({"database": {"url": DB_URL}}, base_dir=tmp_path), tmp_path / "o")
    with pytest.raises(PlatformError, match="not in uv.lock"):
        render(spec_in(tmp_path, image={"extra_requirements": ["no-such-package-xyz"]}), tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written on a bad spec


def test_kubernetes_metadata_connection_encodes_password_once():
    assert metadata_connection("postgres://u:a@b:c/d@h:5432/db") == "postgresql://u:a%40b%3Ac%2Fd@h:5432/db"
    assert metadata_connection("postgresql://u:a%40b@h/db") == "postgresql://u:a%40b@h/db"
    assert metadata_connection("postgresql://h/db") == "postgresql://h/db"


names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    delivery=st.sampled_from(["git-sync", "bundle"]),
    executor=st.sampled_from(["KubernetesExecutor", "LocalExecutor", "CeleryExecutor"]),
    ssh=st.booleans(),
    branch=names,
    sub_path=st.sampled_from(["dags", ".", "a/b", ""]),
    interval=st.integers(1, 3600),
    depth=st.integers(0, 50),
    host=st.builds(lambda a, b: f"{a}.{b}", names, names),
    tls=st.booleans(),
    persistence=st.booleans(),
    remote=st.sampled_from([None, "s3"]),
    mlflow=st.one_of(st.none(), st.just("http://mlflow:5000")),
    endpoint=st.one_of(st.none(), st.just("http://minio:9000")),
    config=st.dictionaries(names, st.one_of(st.booleans(), st.integers(), names), max_size=3),
    password=st.text(alphabet="abc:/%?#&=+ $!", min_size=1, max_size=12),
)
def test_kubernetes_property_render_never_crashes_and_validates(
    delivery,
    executor,
    ssh,
    branch,
    sub_path,
    interval,
    depth,
    host,
    tls,
    persistence,
    remote,
    mlflow,
    endpoint,
    config,
    password,
):
    schema = chart_schema()
    from urllib.parse import quote

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "known_hosts").write_text(KNOWN_HOSTS)
        dags = {"branch": branch, "sub_path": sub_path, "sync_interval": interval, "depth": depth, "delivery": delivery}
        if ssh:
            dags |= {
                "repo": "ssh://git@git.example.com:2222/o/r.git",
                "ssh_key_file": "k",
                "known_hosts_file": "known_hosts",
            }
        else:
            dags |= {"repo": "https://git.example.com/o/r.git"}
        data = {
            "dags": dags,
            "airflow": {"executor": executor, "config": {"core": {"default_task_retries": 8}, "x_sec": config}},
            "database": {"url": f"postgresql://u:{quote(password, safe='')}@db:5432/airflow"},
            "ingress": {"host": host, **({"tls_secret": "tls"} if tls else {})},
            "logs": {"persistence": persistence, "remote": remote},
            "mlflow": {"tracking_uri": mlflow},
            "aws": {"endpoint_url": endpoint},
        }
        spec = parse_spec(data, base_dir=tmp)
        r = render(spec, tmp / "out")
        values = yaml.safe_load((tmp / "out" / "values.yaml").read_text())
        jsonschema.validate(values, schema)
        assert values["executor"] == executor
        conn = r.secrets.secrets[1]["stringData"]["connection"]
        assert conn == f"postgresql://u:{quote(password, safe='')}@db:5432/airflow"
        if ssh and delivery == "git-sync":
            assert values["dags"]["gitSync"]["knownHosts"] == KNOWN_HOSTS
        assert ("logging" in values["config"]) == (remote == "s3")
        shutil.rmtree(tmp / "out")


def test_kubernetes_property_manifests_validate_for_variants(tmp_path):
    """kubernetes-validate is a subprocess: run it once over several variants instead of per example."""
    files = []
    for i, over in enumerate(
        [{}, {"logs": {"storage_class": "efs", "size": "50Gi"}}, {"kubernetes": {"namespace": "ml-airflow"}}]
    ):
        d = tmp_path / str(i)
        d.mkdir()
        render(spec_in(d, delivery="bundle" if i % 2 else "git-sync", **over), d / "out")
        files += [d / "out" / "secrets.yaml", d / "out" / "manifests.yaml"]
    validate_k8s(*files)


def test_kubernetes_ingress_without_tls_warns_and_with_tls_does_not(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = render(spec_in(tmp_path / "a"), tmp_path / "a" / "out")
    assert [w for w in plain.warnings if "has no TLS" in w and "ingress.tls_secret" in w]
    tls = render(spec_in(tmp_path / "b", ingress={"tls_secret": "airflow-tls"}), tmp_path / "b" / "out")
    assert not [w for w in tls.warnings if "TLS" in w]
    assert tls.values["ingress"]["apiServer"]["hosts"][0]["tls"] == {"enabled": True, "secretName": "airflow-tls"}


def test_kubernetes_login_is_ours_never_the_charts_admin_admin(tmp_path):
    r = render(spec_in(tmp_path), tmp_path / "out")
    job = r.values["createUserJob"]
    assert job["enabled"] and job["defaultUser"]["password"] == ""
    env = next(e for e in job["env"] if e["name"] == "AIRFLOW_GITOPS_ADMIN_PASSWORD")
    assert env["valueFrom"]["secretKeyRef"] == {"name": "airflow-admin-password", "key": "password"}
    script = job["args"][-1]
    # The password reaches `airflow users create` on stdin, never as an argument.
    assert "--password" not in script and " -p " not in script and "users create" in script
    assert f'"${env["name"]}"' in script.split("|")[0]
    admin = next(s for s in r.secrets.secrets if s["metadata"]["name"] == "airflow-admin-password")
    password = admin["stringData"]["password"]
    assert len(password) >= 20 and password != "admin"
    rendered = (tmp_path / "out" / "values.yaml").read_text() + (tmp_path / "out" / "manifests.yaml").read_text()
    assert password not in rendered and "password: admin" not in rendered


def test_kubernetes_secret_looking_airflow_config_goes_to_a_secret_not_values(tmp_path):
    token = secrets.token_urlsafe(24)
    spec = spec_in(tmp_path, airflow={"config": {"smtp": {"smtp_password": token, "smtp_host": "mail.example.com"}}})
    r = render(spec, tmp_path / "out")
    assert token not in (tmp_path / "out" / "values.yaml").read_text()
    assert r.values["config"]["smtp"] == {"smtp_host": "mail.example.com"}
    assert {
        "envName": "AIRFLOW__SMTP__SMTP_PASSWORD",
        "secretName": "airflow-config-secrets",
        "secretKey": "AIRFLOW__SMTP__SMTP_PASSWORD",
    } in r.values["secret"]
    cfg = next(s for s in r.secrets.secrets if s["metadata"]["name"] == "airflow-config-secrets")
    assert cfg["stringData"] == {"AIRFLOW__SMTP__SMTP_PASSWORD": token}


def _compile_for(image_dir: Path, python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """uv's resolver over the image's requirements + constraints for a CPython ``python`` (X.Y.Z)."""
    uv = os.environ.get("UV") or shutil.which("uv") or str(Path.home() / ".cache/airflow-gitops/uv/bin/uv")
    reqs = tmp_path / f"all-{python}.txt"
    reqs.write_text((image_dir / "requirements.txt").read_text())  # Airflow itself is in it
    return subprocess.run(
        [
            uv,
            "pip",
            "compile",
            str(reqs),
            "-c",
            str(image_dir / "constraints.txt"),
            "--python-version",
            python,
            "--python-platform",
            "x86_64-manylinux_2_28",
            "--no-header",
            "--no-annotate",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kubernetes_image_python_with_the_base_patch_level_pins_what_that_python_can_install(tmp_path):
    """uv.lock has markers on the patch level (beautifulsoup4 -> soupsieve 4.1.3 only for >= 3.11.5): pinned
    at a later patch level (3.11.7, as an interpreter of the newest patch would), the amazon provider's
    closure cannot install on Debian's 3.11.2 (the defect the real node found); with image.python '3.11.2' it
    resolves, and the Dockerfile checks the base."""
    render(
        spec_in(tmp_path, image={"python": "3.11.7"}, logs={"remote": "s3"}, aws={"bucket": "mlops-data"}),
        tmp_path / "a",
    )
    failed = _compile_for(tmp_path / "a" / "image", "3.11.2", tmp_path)
    assert failed.returncode != 0 and "soupsieve" in failed.stderr, failed.stderr[-2000:]

    render(
        spec_in(tmp_path, image={"python": "3.11.2"}, logs={"remote": "s3"}, aws={"bucket": "mlops-data"}),
        tmp_path / "b",
    )
    proc = _compile_for(tmp_path / "b" / "image", "3.11.2", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "apache-airflow-providers-amazon" in proc.stdout
    dockerfile = (tmp_path / "b" / "image" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=apache/airflow:" in dockerfile and "-python3.11\n" in dockerfile  # the tag: X.Y
    assert "want = '3.11.2'" in dockerfile


def test_image_python_must_be_a_quoted_python_version(tmp_path):
    with pytest.raises(SpecError, match=r"write it quoted, python: '3.1'"):
        parse_spec({"image": {"python": 3.10}}, base_dir=tmp_path)
    for bad in ("3.9", "3.11.2\n", "3", "python3.11"):
        with pytest.raises(SpecError, match="is not a Python the image can have"):
            parse_spec({"image": {"python": bad}}, base_dir=tmp_path)


def test_an_image_digest_pins_every_pod_and_latest_without_it_warns(tmp_path):
    digest = "sha256:" + "ab" * 32
    spec = spec_in(
        tmp_path, kubernetes={"chart": str(shared_file(CHART_TGZ))}, image={"tag": "2026.12.1", "digest": digest}
    )
    r = render(spec, tmp_path / "out")
    assert r.values["images"]["airflow"]["digest"] == digest
    assert not [w for w in r.warnings if "moving tag" in w]
    docs = [d for d in yaml.safe_load_all((tmp_path / "out" / "chart.yaml").read_text()) if d]
    docs += [d for d in yaml.safe_load_all((tmp_path / "out" / "serving.yaml").read_text()) if d]
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
        if "airflow-mlops" in c["image"]
    }
    assert images == {f"airflow-gitops/airflow-mlops@{digest}"}, images
    latest = render(spec_in(tmp_path), tmp_path / "latest")
    assert [w for w in latest.warnings if "moving tag" in w and "image.digest" in w], latest.warnings
    with pytest.raises(SpecError, match="is not an image digest"):
        parse_spec({"image": {"digest": "sha256:abc"}}, base_dir=tmp_path)


def test_the_dag_processor_rescans_at_the_sync_interval_on_both_deliveries(tmp_path):
    """git-sync puts a pushed file into the dags folder every dags.sync_interval; the DAG processor's dags-folder
    bundle only looks for new files every [dag_processor] refresh_interval (Airflow's default: 300 s). Found on
    the real node: a pushed DAG was synced within 10 s and not listed 80 s later."""
    for delivery in ("git-sync", "bundle"):
        r = render(spec_in(tmp_path, dags={"delivery": delivery, "sync_interval": 10}), tmp_path / delivery)
        assert r.values["config"]["dag_processor"]["refresh_interval"] == "10", r.values["config"]
