"""AWS credentials (the seed's ``/home/airflow/.aws`` mount): file well-formed, identity proven.

Real AWS or ``aws.endpoint_url``: STS GetCallerIdentity with the keys from the credentials file, the
way boto3 inside a task would use them. The local S3 endpoint has no STS: there a signed ListBuckets
must pass and the same request with a wrong secret must be refused (so the endpoint really checks).
Only the access key id's last 4 characters and the caller ARN are shown; never the secret key.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from ..local.layout import Layout
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip, warn

KEYS = ("aws_access_key_id", "aws_secret_access_key")


def read_credentials(path: Path, profile: str) -> tuple[dict[str, str] | None, CheckResult]:
    name = "aws.credentials"
    example = f"[{profile}]\naws_access_key_id = AKIA...\naws_secret_access_key = ..."
    if not path.exists():
        return None, fail(name, f"{path} does not exist", f"create it (INI): {example!r} or fix aws.credentials_file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except configparser.MissingSectionHeaderError as err:
        return None, fail(
            name,
            f"{path} line {err.lineno}: a key before any [profile] header",
            f"start the file with a [{profile}] line (it is an INI file: {example!r})",
        )
    except configparser.Error as err:
        first = str(err).splitlines()[0][:200]
        return None, fail(name, f"{path} is not a valid INI file: {first}", f"rewrite it as {example!r}")
    except UnicodeDecodeError:
        return None, fail(name, f"{path} is not UTF-8 text", f"rewrite it as {example!r}")
    if not parser.has_section(profile):
        found = ", ".join(parser.sections()) or "none"
        return None, fail(
            name,
            f"{path} has no [{profile}] profile (profiles: {found})",
            f"set aws.profile to one of them or add a [{profile}] section",
        )
    section = parser[profile]
    missing = [k for k in KEYS if not section.get(k, "").strip()]
    if missing:
        return None, fail(name, f"[{profile}] in {path} lacks {' and '.join(missing)}", f"add both keys: {example!r}")
    values = {k: section[k].strip() for k in (*KEYS, "aws_session_token") if section.get(k)}
    quoted = [k for k, v in values.items() if v[:1] in "'\"" or " " in v]
    if quoted:
        return None, fail(
            name,
            f"{' and '.join(quoted)} in [{profile}] contain quotes or spaces (boto3 does not strip them)",
            "remove the quotes: aws_access_key_id = AKIA... (no quotes)",
        )
    key_id = values["aws_access_key_id"]
    return values, ok(name, f"{path} [{profile}]: access key id ...{key_id[-4:]} and a secret key")


def check_sts(values: dict[str, str], endpoint: str | None, region: str, *, local_endpoint: bool) -> CheckResult:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    name = "aws.sts"
    where = endpoint or f"AWS STS ({region})"
    client = boto3.client(
        "sts",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=values["aws_access_key_id"],
        aws_secret_access_key=values["aws_secret_access_key"],
        aws_session_token=values.get("aws_session_token"),
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
    )
    try:
        ident = client.get_caller_identity()
    except EndpointConnectionError:
        if local_endpoint:
            return skip(name, f"the local S3/STS endpoint {endpoint} is not running: `up` starts it")
        return fail(name, f"cannot connect to {where}", "check aws.endpoint_url / network access to AWS")
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"):
            return fail(
                name,
                f"{where} rejected the credentials ({code})",
                "the access key id or secret key is wrong or deleted: create a new access key and update the file",
            )
        if code == "ExpiredToken":
            return fail(name, f"{where}: the session token expired", "refresh the temporary credentials")
        return fail(name, f"{where}: {code or err}", "check the credentials and aws.endpoint_url")
    except BotoCoreError as err:
        return fail(name, f"{where}: {type(err).__name__}: {str(err)[:200]}", "check aws.endpoint_url and region")
    return ok(name, f"{where} answers: {ident.get('Arn')} (account {ident.get('Account')})")


def check_local_s3(values: dict[str, str], endpoint: str, region: str) -> CheckResult:
    """The local endpoint serves S3 only (no STS): a signed ListBuckets must pass, a wrong secret must not."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    name = "aws.s3_credentials"
    cfg = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})

    def client(secret: str):
        return boto3.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint,
            aws_access_key_id=values["aws_access_key_id"],
            aws_secret_access_key=secret,
            config=cfg,
        )

    try:
        client(values["aws_secret_access_key"]).list_buckets()
    except EndpointConnectionError:
        return skip(name, f"the local S3 endpoint {endpoint} is not running: `up` starts it")
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        return fail(
            name,
            f"the local S3 endpoint {endpoint} refused the generated credentials ({code})",
            "`airflow-gitops down` then `up` rewrites aws/credentials from STATE_DIR/secrets",
        )
    except BotoCoreError as err:
        return fail(name, f"{endpoint}: {type(err).__name__}", "`airflow-gitops logs s3`")
    try:
        client(values["aws_secret_access_key"] + "-wrong").list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "refused")
        return ok(name, f"{endpoint} accepts the credentials (signed ListBuckets) and refuses a wrong secret ({code})")
    return fail(
        name,
        f"{endpoint} accepted a wrong secret: it does not check credentials",
        "`airflow-gitops down` then `up` restarts it with its credentials",
    )


def aws_checks(spec: PlatformSpec) -> list[CheckResult]:
    layout = Layout(spec)
    creds = layout.aws_credentials
    if layout.runs_local_s3 and not creds.exists():
        return [skip("aws.credentials", f"{creds} is generated by `up` for the local S3 endpoint")]
    values, row = read_credentials(creds, spec.aws.profile)
    rows = [row]
    cfg = layout.aws_config
    if spec.aws.config_file and not cfg.exists():
        rows.append(warn("aws.config", f"{cfg} does not exist", "create it or remove aws.config_file"))
    if values is None:
        rows.append(skip("aws.sts", "not checked: fix the credentials file first"))
        return rows
    if layout.runs_local_s3:
        rows.append(check_local_s3(values, layout.s3_url, spec.aws.region))
    else:
        rows.append(check_sts(values, layout.s3_url, spec.aws.region, local_endpoint=False))
    return rows
