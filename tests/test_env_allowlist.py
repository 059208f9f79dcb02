"""Issue 22: the shell that runs `up` does not reach the platform's processes (local/environment.py), and
`verify` catches a component whose S3 credentials do not work (checks/process_s3.py).

One real platform for the module, brought up from a shell holding a token, an ssh-agent socket, AWS keys,
an AIRFLOW__ setting and PYTHONPATH. Before the allow-list every component and task inherited them, and
boto3 in tasks and MLflow used the shell's AWS keys instead of the platform's profile (403).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import DagRepo, cleanup_platform, make_spec, mlflow_login, quiet_console, wait_for

from airflow_gitops import keystore
from airflow_gitops.checks.process_s3 import s3_credential_rows, supervisord_environ
from airflow_gitops.checks.verify import run_verify_local
from airflow_gitops.local.environment import supervisord_env
from airflow_gitops.local.layout import Layout
from airflow_gitops.local.platform import LocalTarget

# What the user's shell held when `up` ran: none of it may reach a component or a task.
LEAKY_SHELL = {
    "SECRET_TOKEN": "leak-token-" + uuid.uuid4().hex,
    "GITHUB_TOKEN": "leak-github-" + uuid.uuid4().hex,
    "SSH_AUTH_SOCK": "/tmp/leak-agent.sock",
    "AWS_ACCESS_KEY_ID": "AKIALEAKWRONG0000000",
    "AWS_SECRET_ACCESS_KEY": "leak-wrong-secret",
    "AIRFLOW__CORE__LEAK_PROBE": "1",
    "PYTHONPATH": "/nonexistent/leak",
    "VIRTUAL_ENV": "/nonexistent/leak-venv",
    "PGPASSWORD": "leak-pg",
}

PROBE_DAG_ID = "env_allowlist_probe"
PROBE_DAG = f'''
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{PROBE_DAG_ID}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def probe():
        import os, uuid
        import boto3
        session = boto3.session.Session()
        s3 = session.client("s3")
        bucket, key, body = os.environ["MLOPS_DATA_BUCKET"], "env-allowlist/" + uuid.uuid4().hex, uuid.uuid4().hex
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
        read = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        s3.delete_object(Bucket=bucket, Key=key)
        return {{"names": sorted(os.environ), "method": session.get_credentials().method,
                 "wrote": body, "read": read}}
    probe()

_d()
'''

pytestmark = pytest.mark.platform


# --- the allow-list itself ----------------------------------------------------------------------------
def test_allow_list_passes_only_the_listed_names(tmp_path):
    import sys

    spec = make_spec(tmp_path, {"variables": {"region_hint": "${MY_REGION_HINT}"}})
    venv = str(Path(sys.executable).parent)
    shell = {
        **LEAKY_SHELL,
        "PATH": "/usr/local/bin:/usr/bin",
        "HOME": "/home/u",
        "USER": "u",
        "LOGNAME": "u",
        "LANG": "en_US.UTF-8",
        "LC_ALL": "en_US.UTF-8",
        "LC_TIME": "C",
        "TZ": "Europe/Berlin",
        "TMPDIR": "/tmp/u",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "internal.example",
        "SSL_CERT_FILE": "/etc/ssl/ca.pem",
        "AWS_PROFILE": "personal",
        "AWS_SESSION_TOKEN": "t",
        "MLFLOW_TRACKING_URI": "http://elsewhere",
        "GIT_DIR": "/elsewhere",
        "GIT_SSH_COMMAND": "ssh -i ~/.ssh/id",
        "LD_PRELOAD": "/tmp/evil.so",
        "KUBECONFIG": "/home/u/.kube/config",
        "TERM": "xterm",
        "MY_REGION_HINT": "eu",  # referenced by platform.yaml: read by airflow-gitops only
        "TZ_EXTRA": "not a locale",
    }
    assert supervisord_env(Layout(spec), shell) == {
        "PATH": f"{venv}:/usr/local/bin:/usr/bin",
        "HOME": "/home/u",
        "USER": "u",
        "LOGNAME": "u",
        "LANG": "en_US.UTF-8",
        "LC_ALL": "en_US.UTF-8",
        "LC_TIME": "C",
        "TZ": "Europe/Berlin",
        "TMPDIR": "/tmp/u",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "internal.example,127.0.0.1,localhost",
        "NO_PROXY": "internal.example,127.0.0.1,localhost",
        "SSL_CERT_FILE": "/etc/ssl/ca.pem",
    }
    # The venv's bin/ is not doubled when PATH already starts with it; an empty shell still gets a PATH.
    assert supervisord_env(Layout(spec), {"PATH": f"{venv}:/bin"})["PATH"] == f"{venv}:/bin"
    assert supervisord_env(Layout(spec), {})["PATH"].startswith(f"{venv}:")


# --- a platform brought up from a leaky shell -----------------------------------------------------------
@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> LocalTarget:
    base = tmp_path_factory.mktemp("envallow")
    p = LocalTarget(make_spec(base))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in LEAKY_SHELL.items():
                mp.setenv(name, value)
            p.up(quiet_console())
        p.work = base / "work"
        with mlflow_login(p.layout):  # the MLflow clients here log in as the platform's tasks do
            yield p
    finally:
        cleanup_platform(p)


def _platform_processes(platform: LocalTarget) -> list[psutil.Process]:
    supervisord = psutil.Process(int(platform.supervisor.pidfile.read_text()))
    return [supervisord, *supervisord.children(recursive=True)]


def test_no_shell_variable_reaches_a_running_process(platform):
    procs = _platform_processes(platform)
    states = platform.supervisor.states()
    assert {"postgres", "s3", "mlflow", "forkserver", "serving", "scheduler", "api-server"} <= set(states)
    read, titled = set(), []
    for proc in procs:
        try:
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a short-lived child (e.g. a PostgreSQL backend) ended meanwhile
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if b"PATH" not in env:
            # The fork server's forks (Airflow's components, their task processes) set their title with
            # setproctitle, which overwrites the area /proc shows; their os.environ is checked from a task.
            titled.append(proc.pid)
            continue
        leaked = sorted(k.decode() for k in env if k.decode() in LEAKY_SHELL)
        assert not leaked, f"{proc.cmdline()[:4]} (pid {proc.pid}) has {leaked} from the shell"
        assert not [v for v in LEAKY_SHELL.values() if len(v) > 8 and v.encode() in raw], proc.cmdline()
        read.add(proc.pid)
    # supervisord and every program it started itself (the Airflow ones: the stand-ins launch.py keeps).
    assert procs[0].pid in read
    unread = {name: s["pid"] for name, s in states.items() if s["pid"] not in read}
    assert not unread, (unread, titled)


def test_a_task_sees_none_of_it_and_reaches_s3_with_the_platform_profile(platform):
    repo = DagRepo(platform.spec.dag_repo_url, platform.work)
    repo.push({f"dags/{PROBE_DAG_ID}.py": PROBE_DAG}, f"add {PROBE_DAG_ID}")
    client = platform.client()
    wait_for(lambda: PROBE_DAG_ID in client.dag_ids(), 120, f"{PROBE_DAG_ID} to be listed")
    run_id = client.trigger(PROBE_DAG_ID)
    run = client.wait_run(PROBE_DAG_ID, run_id, timeout=240)
    assert run["state"] == "success", run
    report = client.xcom(PROBE_DAG_ID, run_id, "probe")
    assert not set(LEAKY_SHELL) & set(report["names"]), report["names"]
    assert {"AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "MLOPS_DATA_BUCKET", "PATH", "HOME"} <= set(report["names"])
    # boto3's default chain found the platform's credentials file (not env keys) and the local S3 took them.
    assert report["method"] == "shared-credentials-file"
    assert report["read"] == report["wrote"]


def test_mlflow_stores_artifacts_in_s3_with_its_own_credentials(platform, tmp_path):
    import boto3
    import botocore.session
    import mlflow

    lay = platform.layout
    mlflow.set_tracking_uri(lay.mlflow_url)
    try:
        mlflow.set_experiment("env-allowlist")
        text = uuid.uuid4().hex
        (tmp_path / "note.txt").write_text(text)
        with mlflow.start_run() as run:  # the artifact is uploaded by the MLflow server, into S3
            mlflow.log_artifact(str(tmp_path / "note.txt"))
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="note.txt", dst_path=str(tmp_path / "d")
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert open(path).read() == text
    core = botocore.session.Session(profile=platform.spec.aws.profile)
    core.set_config_variable("credentials_file", str(lay.aws_credentials))
    core.set_config_variable("config_file", str(lay.aws_config))
    s3 = boto3.session.Session(botocore_session=core).client("s3", endpoint_url=lay.s3_url)
    listed = s3.list_objects_v2(Bucket=platform.spec.aws.bucket, Prefix="mlflow-artifacts/")
    assert [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(f"{run.info.run_id}/artifacts/note.txt")]


# --- verify's rows ---------------------------------------------------------------------------------------
def _by_name(rows):
    return {r.name: r for r in rows}


def test_verify_rows_pass_with_the_environment_the_components_have(platform):
    """On the old code this platform's rows failed: `boto3 in tasks uses AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY from the environment of supervisord (pid N), not profile [default] of
    .../aws/credentials: http://127.0.0.1:PORT answers 403 for bucket mlops-data`."""
    rows = _by_name(run_verify_local(platform, probe=False))
    for label in ("tasks", "mlflow", "serving"):
        row = rows[f"verify.s3_credentials.{label}"]
        assert row.status == "ok", row
        assert "shared-credentials-file" in row.saw and "HeadBucket" in row.saw, row
    assert not [r for r in rows.values() if r.status == "fail"]
    # The rows took the daemon's real environment (/proc), not one rebuilt here.
    assert supervisord_environ(platform)[1].startswith("supervisord (pid")
    # Never the secret, nor a whole access key id.
    access, secret = (
        keystore.read_private(platform.spec.secrets_dir / n).decode() for n in ("s3_access_key", "s3_secret_key")
    )
    text = json.dumps([r.__dict__ for r in rows.values()], default=str)
    assert secret not in text and access not in text


def test_verify_fails_for_aws_keys_in_supervisords_environment(platform):
    """What a platform started before the allow-list (from this shell) had: the real endpoint refuses."""
    base, _ = supervisord_environ(platform)
    leaky = {
        **base,
        "AWS_ACCESS_KEY_ID": LEAKY_SHELL["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": LEAKY_SHELL["AWS_SECRET_ACCESS_KEY"],
    }
    rows = _by_name(s3_credential_rows(platform, leaky))
    for label in ("tasks", "mlflow", "serving"):
        row = rows[f"verify.s3_credentials.{label}"]
        assert row.status == "fail", row
        assert "AWS_ACCESS_KEY_ID" in row.saw and f"not profile [{platform.spec.aws.profile}]" in row.saw, row
        assert "answers" in row.saw and "for bucket" in row.saw, row
        assert "`airflow-gitops down`, then `up`" in row.fix and "allow-listed" in row.fix
        assert LEAKY_SHELL["AWS_SECRET_ACCESS_KEY"] not in row.saw + row.fix


def test_verify_fails_when_the_credentials_file_tasks_read_is_wrong(platform):
    creds = platform.layout.aws_credentials
    good = keystore.read_private(creds).decode()
    secret = keystore.read_private(platform.spec.secrets_dir / "s3_secret_key").decode()
    keystore.write_private(creds, good.replace(secret, "not-the-secret-" + "x" * 20))
    try:
        rows = _by_name(s3_credential_rows(platform))
    finally:
        keystore.write_private(creds, good)
    row = rows["verify.s3_credentials.tasks"]
    assert row.status == "fail", row
    assert "refuses the S3 credentials" in row.saw and "shared-credentials-file" in row.saw, row
    assert str(creds) in row.fix and "down" in row.fix
    assert _by_name(s3_credential_rows(platform))["verify.s3_credentials.tasks"].status == "ok"
