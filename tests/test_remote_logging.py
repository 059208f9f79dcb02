"""logs.remote: s3 — Airflow's remote task logging to the platform's bucket, on both targets.

What Airflow makes of the settings is asked of Airflow itself (its logging settings module and the
amazon provider's S3 log IO, in a child process so this process's Airflow config stays untouched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
