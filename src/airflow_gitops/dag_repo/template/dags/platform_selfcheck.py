"""Prove, from inside a task, that this platform gives DAG code what it needs.

Runs where tasks run (on Kubernetes: in a worker pod) and checks:

* ``aws_identity``   the AWS identity boto3 resolves (STS GetCallerIdentity) and where its credentials come from;
                     against an S3-only endpoint (the local platform's: no STS), that its signed requests
                     are accepted AND that the same request with a wrong secret is refused
* ``s3_write_read``  write, read back and delete an object in s3://$MLOPS_DATA_BUCKET (bucket created if missing)
* ``mlflow``         the MLflow tracking server answers ($MLFLOW_TRACKING_URI: /health and the REST API, with
                     $MLFLOW_TRACKING_USERNAME/$MLFLOW_TRACKING_PASSWORD when set)
* ``metadata_db``    Airflow 3 tasks never connect to the metadata database themselves: they talk to the
                     Execution API, which does. The check writes an XCom and reads it back through that API,
                     a round trip through the metadata database.
* ``bundle_version`` the DAG bundle version (Git commit) this task runs from; informational unless the
                     ``require_bundle_version`` param is true.

The report is logged, and returned (XCom ``return_value``) as
``{"ok": bool, "checks": {name: {"ok": bool, "detail": str}}, "bundle_version": str | None}``.
On failure the same report is pushed as XCom ``report`` and the task fails naming the broken parts.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


def _aws_hint() -> str:
    import os

    hints = []
    for var in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        path = os.environ.get(var)
        if path and not os.path.exists(path):
            hints.append(f"{var}={path} does not exist")
    return ("; " + "; ".join(hints)) if hints else ""


def _check_aws() -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise RuntimeError("boto3 found no AWS credentials" + _aws_hint())
    where = f"credentials from {creds.method}, region {session.region_name}"
    s3 = session.client("s3")
    if "amazonaws.com" in s3.meta.endpoint_url:
        ident = session.client("sts").get_caller_identity()
        return f"account={ident['Account']} arn={ident['Arn']} ({where})"
    try:
        ident = session.client("sts").get_caller_identity()
        return f"account={ident['Account']} arn={ident['Arn']} ({where})"
    except (ClientError, BotoCoreError):
        pass  # an S3-only endpoint: no STS; prove the credentials with signed S3 requests instead
    s3.list_buckets()  # signed with these credentials: accepted
    frozen = creds.get_frozen_credentials()
    wrong = session.client(
        "s3", aws_access_key_id=frozen.access_key, aws_secret_access_key=frozen.secret_key + "-wrong"
    )
    try:
        wrong.list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "refused")
    else:
        raise RuntimeError(f"{s3.meta.endpoint_url} accepted a wrong secret: it does not check credentials")
    return (
        f"access key ...{frozen.access_key[-4:]} accepted by {s3.meta.endpoint_url} (signed ListBuckets; the "
        f"endpoint has no STS) and a wrong secret refused ({code}) ({where})"
    )


def _check_s3(run_id: str) -> str:
    import uuid

    import mlops_common as mc

    cfg = mc.settings()
    s3 = mc.s3_client()
    mc.ensure_bucket(s3, cfg.bucket, cfg.region)
    key = f"_selfcheck/{run_id}/{uuid.uuid4().hex}.txt"
    payload = f"airflow-gitops selfcheck {run_id}".encode()
    s3.put_object(Bucket=cfg.bucket, Key=key, Body=payload)
    back = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=cfg.bucket, Key=key)
    if back != payload:
        raise RuntimeError(f"read back {len(back)} bytes that differ from the {len(payload)} written")
    return f"wrote, read back and deleted s3://{cfg.bucket}/{key} (endpoint {s3.meta.endpoint_url})"


def _check_mlflow() -> str:
    import base64
    import json
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    import mlops_common as mc

    cfg = mc.settings()
    base = cfg.mlflow_tracking_uri.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RuntimeError(f"MLFLOW_TRACKING_URI={base!r} is not an MLflow server URL")
    with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
        health = resp.read().decode(errors="replace").strip()
    query = urllib.parse.urlencode({"max_results": 1})
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?{query}")
    # The credential MLflow's own client sends (HTTP basic auth), where the platform gives one.
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            json.load(resp)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise RuntimeError(
                f"MLflow refused the REST API call ({err.code}): the task's MLFLOW_TRACKING_USERNAME/"
                "MLFLOW_TRACKING_PASSWORD " + ("are not accepted" if user and password else "are not set")
            ) from None
        raise
    return f"{base}/health answered {health!r}; REST API answers (experiment {cfg.mlflow_experiment!r})"


def _check_metadata_db(ti) -> str:
    import uuid

    token = uuid.uuid4().hex
    ti.xcom_push(key="selfcheck_probe", value=token)
    back = ti.xcom_pull(task_ids=ti.task_id, key="selfcheck_probe")
    if back != token:
        raise RuntimeError(f"XCom round trip returned {back!r}, expected {token!r}")
    return "XCom write + read through the Execution API (backed by the metadata database) succeeded"


@dag(
    dag_id="platform_selfcheck",
    description="Check AWS identity, S3, MLflow, the metadata database and the bundle version from inside a task",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["platform", "selfcheck"],
    # a self-check reports the current state: retrying would only delay the answer
    default_args={"owner": "platform", "retries": 0},
    params={
        "require_bundle_version": Param(
            False, type="boolean", description="fail when the task cannot see the Git commit it runs from"
        ),
    },
    doc_md=__doc__,
)
def platform_selfcheck():
    @task(multiple_outputs=False)
    def selfcheck() -> dict:
        import json

        import mlops_common as mc

        ctx = get_current_context()
        ti = ctx["ti"]
        checks: dict[str, dict] = {}

        def run(name, fn, *args):
            try:
                checks[name] = {"ok": True, "detail": fn(*args)}
            except Exception as exc:  # the report names what broke; the task fails below
                detail = f"{type(exc).__name__}: {exc}"
                if name in ("aws_identity", "s3_write_read") and "credentials" in detail.lower():
                    detail += _aws_hint()
                checks[name] = {"ok": False, "detail": detail}

        run("aws_identity", _check_aws)
        run("s3_write_read", _check_s3, ctx["dag_run"].run_id)
        run("mlflow", _check_mlflow)
        run("metadata_db", _check_metadata_db, ti)
        version, source = mc.bundle_version(ctx)
        required = bool(ctx["params"].get("require_bundle_version"))
        checks["bundle_version"] = {
            "ok": bool(version) or not required,
            "detail": f"{version} (from {source})" if version else f"none ({source})",
        }
        report = {
            "ok": all(c["ok"] for c in checks.values()),
            "checks": checks,
            "bundle_version": version,
        }
        lines = ["platform self-check: " + ("PASSED" if report["ok"] else "FAILED")]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {name}: {c['detail']}" for name, c in checks.items()]
        print("\n".join(lines))
        if not report["ok"]:
            ti.xcom_push(key="report", value=json.loads(json.dumps(report)))
            broken = [f"{name} ({c['detail']})" for name, c in checks.items() if not c["ok"]]
            raise RuntimeError("platform self-check failed: " + "; ".join(broken))
        return report

    selfcheck()


platform_selfcheck()
