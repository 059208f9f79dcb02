"""logs.remote: s3 — Airflow's remote task logging to the platform's bucket, on both targets.

What Airflow makes of the settings is asked of Airflow itself (its logging settings module and the
amazon provider's S3 log IO, in a child process so this process's Airflow config stays untouched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_gitops import contract, names
from airflow_gitops.spec import parse_spec

# In a child process: what Airflow's own logging settings build from the environment.
AIRFLOW_LOG_IO = """
import json
from airflow.config_templates import airflow_local_settings as s
io = s.REMOTE_TASK_LOG
out = {"io": type(io).__name__ if io else None, "remote_base": getattr(io, "remote_base", None)}
if io is not None:
    c = io.hook.conn_config
    out.update(endpoint=c.get_service_endpoint_url("s3"), region=c.region_name, conn_type=c.conn_type)
print(json.dumps(out))
"""


def airflow_log_io(env: dict[str, str], home) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AWS_"))}
    r = subprocess.run(
        [sys.executable, "-c", AIRFLOW_LOG_IO],
        env={**clean, "AIRFLOW_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _env(spec, s3_endpoint):
    env = {names.Setting(s, k, None).env: v for (s, k), v in contract.common_config(spec).items()}
    return {**env, **contract.logs_connection(spec, s3_endpoint=s3_endpoint)}


def test_contract_gives_airflow_an_s3_log_io_on_the_platform_bucket(tmp_path):
    spec = parse_spec(
        {"logs": {"remote": "s3", "remote_prefix": "team/logs"}, "aws": {"bucket": "b-1", "region": "eu-west-1"}}
    )
    got = airflow_log_io(_env(spec, "http://127.0.0.1:5999"), tmp_path)
    assert got == {
        "io": "S3RemoteLogIO",
        "remote_base": "s3://b-1/team/logs",
        "endpoint": "http://127.0.0.1:5999",
        "region": "eu-west-1",
        "conn_type": "aws",
    }
    # Real AWS (no endpoint): the Connection names none, boto3 resolves S3's own.
    conn = json.loads(contract.logs_connection(spec, s3_endpoint=None)["AIRFLOW_CONN_AIRFLOW_GITOPS_LOGS"])
    assert conn == {"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}
    assert not any(w in json.dumps(conn).lower() for w in ("secret", "access_key", "password"))


def test_remote_logging_off_is_the_seed(tmp_path):
    spec = parse_spec({})
    assert not any(section == "logging" for section, _ in contract.common_config(spec))
    assert contract.logs_connection(spec, s3_endpoint="http://127.0.0.1:5999") == {}
    assert airflow_log_io(_env(spec, None), tmp_path)["io"] is None


# In a child process with the local target's environment: a task's log file is uploaded by Airflow's own
# S3 log IO (what the task supervisor calls when a task ends), then read back the way the API server does.
UPLOAD_AND_READ = """
import json, sys
from airflow.config_templates import airflow_local_settings as s
io = s.REMOTE_TASK_LOG
rel = sys.argv[1]
path = io.base_log_folder / rel
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(sys.argv[2])
io.upload(rel, None)
sources, logs = io.read(rel, None)
c = io.hook.conn_config
conn = {"id": c.conn_id, "type": c.conn_type, "endpoint": c.get_service_endpoint_url("s3")}
print(json.dumps({"sources": sources, "logs": logs, "base": str(io.base_log_folder), "conn": conn}))
"""


def test_local_target_uploads_task_logs_to_its_own_s3_endpoint(tmp_path):
    """The local platform's Airflow environment (airflow_env: settings, Connection, AWS files) writes a
    task log into s3://<aws.bucket>/<logs.remote_prefix>/ on the real local endpoint (rclone) and reads
    it back from there; the object is then checked with a plain S3 client."""
    from conftest import free_port, local_s3, make_spec

    from airflow_gitops.local import mlflow_store
    from airflow_gitops.local.airflow_env import airflow_env
    from airflow_gitops.local.platform import LocalTarget

    spec = make_spec(
        tmp_path,
        {"logs": {"remote": "s3", "remote_prefix": "airflow/task-logs"}, "local": {"ports": {"s3": free_port()}}},
    )
    platform = LocalTarget(spec)
    lay = platform.layout
    lay.airflow_home.mkdir(parents=True, exist_ok=True)
    with local_s3(platform):
        mlflow_store.ensure_bucket(lay)  # what the s3 component's on_ready does in `up`
        env = airflow_env(lay, "postgresql://u:p@127.0.0.1:1/db")  # no database is needed for logs
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AWS_"))}
        rel = "dag_id=d1/run_id=manual__1/task_id=t1/attempt=1.log"
        line = '{"event": "hello from the task", "level": "info"}\n'
        r = subprocess.run(
            [sys.executable, "-c", UPLOAD_AND_READ, rel, line],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        key = f"airflow/task-logs/{rel}"
        assert got["sources"] == [f"s3://{spec.aws.bucket}/{key}"], got
        assert got["logs"] == [line], got
        # Through the platform's Connection (boto3 alone would find the endpoint in the AWS config file too).
        assert got["conn"] == {"id": "airflow_gitops_logs", "type": "aws", "endpoint": lay.s3_url}, got
        assert got["base"] == str(lay.task_logs)  # the local copy stays where the seed mode keeps it
        body = mlflow_store._s3(lay).get_object(Bucket=spec.aws.bucket, Key=key)["Body"].read().decode()
        assert body == line
        assert (lay.s3_data / spec.aws.bucket / key).read_text() == line  # a file on disk: survives down/up


MARKER_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def speak():
        print("{marker}")
    speak()

_d()
"""


@pytest.mark.platform  # starts a real local platform
def test_a_task_log_goes_to_s3_and_the_api_server_reads_it_from_there(tmp_path):
    """End to end on a real local platform with logs.remote: s3: a task's log is uploaded when it ends
    (by Airflow's task supervisor, through the platform's Connection) to s3://<bucket>/<prefix>/ on the
    local S3 endpoint; Airflow then empties the local copy, so the log the API server serves (what the UI
    shows) is the one it read back from S3."""
    import uuid

    from conftest import DagRepo, cleanup_platform, make_spec, quiet_console, wait_for

    from airflow_gitops.local import mlflow_store
    from airflow_gitops.local.platform import LocalTarget

    spec = make_spec(tmp_path, {"logs": {"remote": "s3", "remote_prefix": "e2e/logs"}, "serving": {"enabled": False}})
    platform = LocalTarget(spec)
    try:
        platform.up(quiet_console())
        dag_id, marker = "remote_log_e2e", f"marker-{uuid.uuid4().hex}"
        repo = DagRepo(spec.dag_repo_url, tmp_path / "work")
        repo.push({f"dags/{dag_id}.py": MARKER_DAG.format(dag_id=dag_id, marker=marker)}, f"add {dag_id}")
        client = platform.client()
        wait_for(lambda: dag_id in client.dag_ids(), 120, f"{dag_id} to be listed")
        run_id = client.trigger(dag_id)
        run = client.wait_run(dag_id, run_id, timeout=240)
        assert run["state"] == "success", client.task_log(dag_id, run_id, "speak")[-3000:]
        s3 = mlflow_store._s3(platform.layout)
        prefix = f"e2e/logs/dag_id={dag_id}/"

        def uploaded():
            return [o["Key"] for o in s3.list_objects_v2(Bucket=spec.aws.bucket, Prefix=prefix).get("Contents", [])]

        # The run is success when the task process reports it; its supervisor uploads the log after that.
        keys = wait_for(uploaded, 90, "the task log in S3")
        assert len(keys) == 1 and keys[0].endswith("task_id=speak/attempt=1.log"), keys
        body = s3.get_object(Bucket=spec.aws.bucket, Key=keys[0])["Body"].read().decode()
        assert marker in body
        local = platform.layout.task_logs / keys[0].removeprefix("e2e/logs/")
        assert local.exists() and marker not in local.read_text(), "the local copy was not replaced by the upload"
        assert marker in client.task_log(dag_id, run_id, "speak")
    finally:
        cleanup_platform(platform)
