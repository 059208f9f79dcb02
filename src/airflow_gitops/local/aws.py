"""AWS credentials for DAG code: the local stand-in for the seed's ``/home/airflow/.aws`` mount.

With no ``aws.credentials_file`` in the spec the local target runs its own S3 endpoint (``rclone serve
s3`` on a folder of the state directory: objects are files on disk, so they survive ``down``/``up`` and
crashes). Its access key and secret are generated once (0600, like every key) and written into a shared
credentials file in ``<state>/aws/``; the config file there points boto3 (>= 1.28) at the endpoint, so
DAG code calls plain ``boto3.client("s3")`` and runs unchanged against real AWS.
"""

from __future__ import annotations

import configparser
import io
import json
import secrets

from .. import keystore
from .layout import Layout

S3_ACCESS_KEY = "s3_access_key"
S3_SECRET_KEY = "s3_secret_key"


def local_s3_keys(layout: Layout) -> tuple[str, str]:
    """(access key id, secret) of the local S3 endpoint, generated once."""
    spec = layout.spec
    access = keystore.ensure(spec.secrets_dir / S3_ACCESS_KEY, lambda: "AGL" + secrets.token_hex(8).upper())
    secret = keystore.ensure(spec.secrets_dir / S3_SECRET_KEY, lambda: secrets.token_urlsafe(30))
    return access, secret


def s3_env_file(layout: Layout) -> str:
    """The 0600 environment file the S3 endpoint starts with (its credentials never go into argv)."""
    access, secret = local_s3_keys(layout)
    path = layout.supervisor / "s3.env.json"
    env = {
        # rclone reads `--auth-key ACCESS,SECRET` from RCLONE_AUTH_KEY (a CSV list: the quotes are needed).
        "RCLONE_AUTH_KEY": f'"{access},{secret}"',
        # Never a user's rclone.conf: this endpoint serves one local folder and nothing else.
        "RCLONE_CONFIG": "/dev/null",
    }
    keystore.write_private(path, json.dumps(env))
    return str(path)


def write_local_aws_files(layout: Layout) -> None:
    spec = layout.spec
    if layout.runs_local_s3:
        access, secret = local_s3_keys(layout)
        creds = configparser.ConfigParser(interpolation=None)
        creds[spec.aws.profile] = {"aws_access_key_id": access, "aws_secret_access_key": secret}
        buf = io.StringIO()
        creds.write(buf)
        keystore.write_private(layout.aws_credentials, buf.getvalue())
    if spec.aws.config_file is None:
        keystore.write_private(
            layout.aws_config, spec.aws.config_file_text(layout.s3_url, local_endpoint=layout.runs_local_s3)
        )
