"""Helpers shared by this repository's DAGs.

Everything here is cheap to import: heavy libraries (boto3, pandas, mlflow) are imported inside the
functions that need them, so DAG files stay fast to parse.

Configuration comes from the environment the platform gives every Airflow process:

    MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME   where runs and models go
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
                                                  read by MLflow's client itself (where the server
                                                  asks for a login: the local platform's does)
    MLOPS_REGISTERED_MODEL                        the registered model name
    MLOPS_DATA_BUCKET                             the S3 bucket for datasets and intermediate files
    AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_PROFILE, AWS_DEFAULT_REGION
                                                  read by boto3 itself (the config file may set
                                                  ``endpoint_url`` for a local S3 endpoint)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

REQUIRED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLOPS_REGISTERED_MODEL", "MLOPS_DATA_BUCKET")

# Tag values MLflow stores for a version whose run had no bundle version (e.g. ``dag.test()`` or a
# bundle without versioning): explicit, so nobody mistakes it for a commit.
UNVERSIONED = "unversioned"


class ConfigError(RuntimeError):
    """The platform did not give this process the environment the DAGs need."""


@dataclass(frozen=True)
class Settings:
    mlflow_tracking_uri: str
    mlflow_experiment: str
    registered_model: str
    bucket: str
    region: str | None


def settings() -> Settings:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"environment variable(s) {', '.join(missing)} not set: the platform sets them on every Airflow "
            "process (see README.md, 'Configuration')"
        )
    return Settings(
        mlflow_tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        mlflow_experiment=os.environ["MLFLOW_EXPERIMENT_NAME"],
        registered_model=os.environ["MLOPS_REGISTERED_MODEL"],
        bucket=os.environ["MLOPS_DATA_BUCKET"],
        region=os.environ.get("AWS_DEFAULT_REGION") or None,
    )


def bundle_version(context: dict[str, Any]) -> tuple[str | None, str]:
    """The Git commit this task's DAG code came from, and where that answer came from.

    Airflow 3 runs a task from the DAG bundle version its Dag run was created with; the task sees
    that bundle as ``ti.bundle_instance`` (``.version`` is the commit for a versioned GitDagBundle).
    A bundle without versioning has ``version=None``; then the commit checked out for this task is
    ``get_current_version()``. Under ``dag.test()`` there is no bundle at all: ``(None, "unavailable")``.
    """
    ti = context.get("ti")
    try:
        bundle = getattr(ti, "bundle_instance", None)
    except Exception:  # pydantic models built with model_construct raise on unset fields
        bundle = None
    if bundle is None:
        return None, "unavailable"
    if getattr(bundle, "version", None):
        return str(bundle.version), "bundle_instance.version"
    try:
        current = bundle.get_current_version()
    except Exception:
        current = None
    current = getattr(current, "version", current)  # Airflow >= 3.3 wraps it in BundleVersion
    if current:
        return str(current), "bundle_instance.get_current_version()"
    return None, f"bundle {getattr(bundle, 'name', '?')!r} has no version"


def s3_client():
    """boto3 S3 client; endpoint, region and credentials come from boto3's own configuration chain."""
    import boto3

    return boto3.session.Session().client("s3")


def ensure_bucket(s3, bucket: str, region: str | None) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def put_parquet(s3, bucket: str, key: str, frame) -> None:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def get_parquet(s3, bucket: str, key: str):
    import io

    import pandas as pd

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))
