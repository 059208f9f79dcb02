"""AWS credentials for DAG code: the local stand-in for the seed's ``/home/airflow/.aws`` mount.

With no ``aws.credentials_file`` in the spec we write a shared credentials file and a config file
into ``<state>/aws/``; the config's ``endpoint_url`` points boto3 (>= 1.28) at the local S3/STS
endpoint, so DAG code calls plain ``boto3.client("s3")`` and runs unchanged against real AWS.
"""

from __future__ import annotations

import configparser
import io

from ..keystore import write_private
from .layout import Layout

# moto accepts any credentials; these are obviously not real ones.
LOCAL_ACCESS_KEY = "AKIALOCALAIRFLOWGITOPS"
LOCAL_SECRET_KEY = "local-endpoint-secret-not-a-real-aws-key"


def write_local_aws_files(layout: Layout) -> None:
    spec = layout.spec
    profile = spec.aws.profile
    if layout.runs_local_s3 and not layout.aws_credentials.exists():
        creds = configparser.ConfigParser()
        creds[profile] = {"aws_access_key_id": LOCAL_ACCESS_KEY, "aws_secret_access_key": LOCAL_SECRET_KEY}
        buf = io.StringIO()
        creds.write(buf)
        write_private(layout.aws_credentials, buf.getvalue())
    if spec.aws.config_file is None:
        write_private(layout.aws_config, spec.aws.config_file_text(layout.s3_url))
