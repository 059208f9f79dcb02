"""``verify.s3_credentials.*``: the S3 credentials a running component really uses reach the platform's S3.

``doctor``'s ``aws.*`` rows prove the keys in the AWS files. What boto3 in a task (or in MLflow, or in
serving) uses is decided by its environment: an ``AWS_ACCESS_KEY_ID`` there wins over the profile, and
then the platform's S3 answers 403 while every component is healthy. So this check takes the
environment the component really has: supervisord's, read from ``/proc`` (what every program
inherits; a platform started by an older airflow-gitops from a shell with AWS keys shows them here),
plus the AWS part of the component's 0600 environment file, as ``launch.py`` applies it. A child
process with exactly that environment resolves credentials with boto3's default chain and sends a
HeadBucket for ``aws.bucket``. Only where the credentials came from and the access key id's last 4
characters are shown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import keystore
from ..local import environment
from ..local.components import serving_env_path
from ..local.mlflow_store import env_path as mlflow_env_path
from .result import CheckResult, fail, ok, skip, warn

if TYPE_CHECKING:
    from ..local.platform import LocalTarget

# What boto3 in the component would do: its default credential chain, the endpoint from the config
# file (MLflow's S3 store passes MLFLOW_S3_ENDPOINT_URL instead), one HeadBucket.
_SCRIPT = r"""
import json, os, sys
out = {}
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session()
    out["profile"] = session.profile_name
    creds = session.get_credentials()
    if creds is not None:
        out["method"] = creds.method
        out["key"] = (creds.access_key or "")[-4:]
        cfg = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
        s3 = session.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None, config=cfg)
        out["endpoint"] = s3.meta.endpoint_url
        s3.head_bucket(Bucket=sys.argv[1])
        out["ok"] = True
except ClientError as err:
    meta = err.response.get("ResponseMetadata", {})
    out["code"] = str(err.response.get("Error", {}).get("Code") or meta.get("HTTPStatusCode") or err)[:100]
except BotoCoreError as err:
    out["error"] = f"{type(err).__name__}: {err}"[:300]
print(json.dumps(out))
"""

# The variables boto3 (and MLflow's S3 store) read from a component's own environment file.
_AWS_PREFIXES = ("AWS_", "MLFLOW_S3_")

TIMEOUT_S = 60


def supervisord_environ(platform: LocalTarget) -> tuple[dict[str, str], str]:
    """supervisord's environment as it is (``/proc/PID/environ``), and where it was read from. When it
    cannot be read (no pid file, not Linux), the one ``up`` would give it now."""
    pidfile = platform.supervisor.pidfile
    try:
        pid = int(pidfile.read_text().strip())
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        return environment.supervisord_env(platform.layout), "the environment `up` gives supervisord"
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}, f"supervisord (pid {pid})"


def component_env(base: dict[str, str], env_file: Path) -> dict[str, str]:
    """``base`` with the AWS variables of a component's environment file on top (``launch.py`` order)."""
    own = json.loads(keystore.read_private(env_file))
    return {**base, **{k: v for k, v in own.items() if k.startswith(_AWS_PREFIXES)}}


def targets(platform: LocalTarget) -> dict[str, Path]:
    """Component label -> its environment file, for each running one that talks to S3."""
    lay = platform.layout
    found = {"tasks": platform.env_file}  # Airflow's components; tasks are their forks
    if lay.runs_local_mlflow:
        found["mlflow"] = mlflow_env_path(lay)
    if lay.serving_url:
        found["serving"] = serving_env_path(lay)
    return found


def s3_credential_rows(platform: LocalTarget, base: dict[str, str] | None = None) -> list[CheckResult]:
    """One ``verify.s3_credentials.<label>`` row a component, the children run at once. ``base``:
    supervisord's environment (default: read from the running daemon)."""
    where = "the given environment"
    if base is None:
        base, where = supervisord_environ(platform)
    bucket = platform.spec.aws.bucket
    running, rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-s3check-") as tmp:
        for label, env_file in targets(platform).items():
            name = f"verify.s3_credentials.{label}"
            if not env_file.exists():
                rows[label] = skip(name, f"{env_file} does not exist: `up` writes it")
                continue
            env = component_env(base, env_file)
            running[label] = (
                env,
                subprocess.Popen(
                    [sys.executable, "-c", _SCRIPT, bucket],
                    env=env,
                    cwd=tmp,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
        for label, (env, proc) in running.items():
            try:
                out, err = proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                out, err = "", f"no answer within {TIMEOUT_S} s"
            rows[label] = _row(platform, label, env, where, out, err)
    return [rows[label] for label in targets(platform) if label in rows]


def _row(platform: LocalTarget, label: str, env: dict[str, str], where: str, out: str, err: str) -> CheckResult:
    name, spec, lay = f"verify.s3_credentials.{label}", platform.spec, platform.layout
    bucket, profile = spec.aws.bucket, spec.aws.profile
    try:
        rep = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        return fail(
            name,
            f"the S3 check in {label}'s environment did not run: {tail[0][:300]}",
            "run it again; if it persists, report it with `airflow-gitops logs`",
        )
    restart = "`airflow-gitops down`, then `up`: supervisord starts with an allow-listed environment"
    leaked = sorted(k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if k in env)
    used = f"credentials from {rep.get('method')} (access key ...{rep.get('key')})"
    endpoint = rep.get("endpoint") or lay.s3_url or "AWS S3"
    if rep.get("method") == "env":
        # The platform never sets these: they came from the shell supervisord was started from.
        saw = (
            f"boto3 in {label} uses {', '.join(leaked) or 'AWS keys'} from the environment of {where}, "
            f"not profile [{profile}] of {lay.aws_credentials}"
        )
        if not rep.get("ok"):
            answer = rep.get("code") or rep.get("error")
            return fail(name, f"{saw}: {endpoint} answers {answer} for bucket {bucket}", restart)
        return warn(name, f"{saw} (accepted by {endpoint}, but not the platform's identity)", restart)
    if rep.get("ok"):
        return ok(name, f"boto3 in {label}: {used}, profile {rep.get('profile')}; HeadBucket {bucket} at {endpoint}")
    if "method" not in rep and "error" not in rep:
        return fail(
            name,
            f"boto3 in {label} finds no AWS credentials (profile {rep.get('profile')})",
            f"check aws.profile and {lay.aws_credentials}; `airflow-gitops doctor` checks the file",
        )
    if rep.get("error"):
        return fail(
            name,
            f"boto3 in {label}: {rep['error']}",
            "`airflow-gitops logs s3`" if lay.runs_local_s3 else "check aws.endpoint_url, aws.profile and region",
        )
    code = rep.get("code")
    if code in ("404", "NoSuchBucket", "NotFound"):
        return fail(
            name,
            f"the bucket {bucket} does not exist at {endpoint}",
            "`airflow-gitops up` creates it on the local endpoint"
            if lay.runs_local_s3
            else f"create it or fix aws.bucket ({bucket})",
        )
    fix = (
        f"{restart}; it rewrites {lay.aws_credentials} from the generated keys"
        if lay.runs_local_s3
        else f"fix the keys of [{profile}] in {lay.aws_credentials} (`airflow-gitops doctor` checks them)"
    )
    return fail(name, f"{endpoint} refuses the S3 credentials boto3 in {label} uses ({used}): {code}", fix)
