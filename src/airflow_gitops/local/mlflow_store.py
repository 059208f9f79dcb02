"""MLflow as the series runs it in production (step 3): runs and models in PostgreSQL, artifacts in S3.

The local MLflow server keeps its backend and registry store in its own database and role of the
platform's PostgreSQL (``mlflow``/``mlflow``, password generated once), and its artifacts in the
platform's S3 bucket under ``mlflow-artifacts/``, served through the tracking server
(``mlflow-artifacts:/`` URIs, as ``mlflow server --serve-artifacts`` does). With an external
``database.url`` there is no platform PostgreSQL to give it a database: the store stays SQLite in the
state directory (``mlflow/mlflow.db``), the artifacts still go to S3.

A state directory from before (SQLite store and artifacts on disk under ``mlflow/``) is carried over
once on ``up``: every table copied into PostgreSQL, every artifact uploaded to the same relative key in
S3 (so ``mlflow-artifacts:/`` URIs stay valid), the old files kept as ``*.migrated``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .. import keystore
from ..errors import PlatformError
from .layout import Layout

if TYPE_CHECKING:
    from .platform import LocalPlatform

DB_NAME = "mlflow"
DB_USER = "mlflow"
DB_PASSWORD = "mlflow_db_password"
ARTIFACT_PREFIX = "mlflow-artifacts"
STORE_ENV = "AIRFLOW_GITOPS_MLFLOW_STORE"
ARTIFACTS_ENV = "AIRFLOW_GITOPS_MLFLOW_ARTIFACTS"
# The server imports MLflow while ``up`` still prepares its store (database, bucket, carry-over), then
# waits until READY_FILE_ENV's file holds READY_TOKEN_ENV's token (new at every ``up``: an old file
# never counts).
READY_FILE_ENV = "AIRFLOW_GITOPS_MLFLOW_READY_FILE"
READY_TOKEN_ENV = "AIRFLOW_GITOPS_MLFLOW_READY_TOKEN"


def legacy_store(layout: Layout) -> Path:
    return layout.mlflow / "mlflow.db"


def db_password(layout: Layout) -> str:
    return keystore.ensure(layout.secrets / DB_PASSWORD, keystore._password)


def store_uri(platform: LocalPlatform) -> str:
    if platform.layout.runs_local_postgres:
        return platform.postgres.url(DB_NAME, DB_USER, db_password(platform.layout))
    return f"sqlite:///{legacy_store(platform.layout)}"


def artifacts_destination(layout: Layout) -> str:
    return f"s3://{layout.spec.aws.bucket}/{ARTIFACT_PREFIX}"


def aws_env(layout: Layout) -> dict[str, str]:
    """What boto3 needs to reach the platform's S3 (the same files DAG code uses)."""
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(layout.aws_credentials),
        "AWS_CONFIG_FILE": str(layout.aws_config),
        "AWS_PROFILE": layout.spec.aws.profile,
        "AWS_DEFAULT_REGION": layout.spec.aws.region,
    }
    if layout.s3_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = layout.s3_url  # MLflow's S3 artifact store reads this
    return env


def webhook_env(layout: Layout) -> dict[str, str]:
    """MLflow's registry webhooks to the serving component on 127.0.0.1 (over http, a private address),
    the registered webhooks re-read every 5 s, their secrets encrypted with a key kept 0600 in the
    secrets folder. Nothing when serving (or its webhook) is off."""
    serving = layout.spec.serving
    if not (serving.enabled and serving.webhook):
        return {}
    return {
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "5",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": keystore.mlflow_webhook_key(layout.spec),
    }


def env_file(platform: LocalPlatform) -> str:
    """The 0600 environment the MLflow server starts with (the store URI holds a password: no argv)."""
    lay = platform.layout
    path = env_path(lay)
    env = {
        STORE_ENV: store_uri(platform),
        ARTIFACTS_ENV: artifacts_destination(lay),
        READY_FILE_ENV: str(ready_file(lay)),
        READY_TOKEN_ENV: uuid.uuid4().hex,
        **aws_env(lay),
        **webhook_env(lay),
    }
    keystore.write_private(path, json.dumps(env))
    return str(path)


def env_path(layout: Layout) -> Path:
    return layout.supervisor / "mlflow.env.json"


def ready_file(layout: Layout) -> Path:
    return layout.mlflow / "store.ready"


def prepare(platform: LocalPlatform, step) -> None:
    """Once PostgreSQL and S3 answer: carry an old store over (:func:`migrate_legacy`), then let the
    server, which has been importing MLflow meanwhile, open its store."""
    migrate_legacy(platform, step)
    token = json.loads(keystore.read_private(env_path(platform.layout)))[READY_TOKEN_ENV]
    ready_file(platform.layout).write_text(token)


def _s3(layout: Layout):
    """An S3 client with the platform's own AWS files (not whatever ~/.aws the CLI's user has)."""
    import boto3
    import botocore.session

    core = botocore.session.Session(profile=layout.spec.aws.profile)
    core.set_config_variable("credentials_file", str(layout.aws_credentials))
    core.set_config_variable("config_file", str(layout.aws_config))
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=layout.s3_url)


def ensure_bucket(layout: Layout) -> None:
    """The data bucket (which also holds MLflow's artifacts) exists: MLflow's first upload needs it."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = _s3(layout)
    bucket = layout.spec.aws.bucket
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise PlatformError(
                f"the S3 bucket {bucket} cannot be used: {err.response.get('Error', {}).get('Code')}",
                "check aws.bucket and the credentials in aws.credentials_file",
            ) from None
    except BotoCoreError as err:
        raise PlatformError(f"S3 does not answer: {type(err).__name__}", "`airflow-gitops logs s3`") from None
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def migrate_legacy(platform: LocalPlatform, step) -> None:
    """Carry a SQLite store and on-disk artifacts over to PostgreSQL and S3, once."""
    lay = platform.layout
    old_db, old_artifacts = legacy_store(lay), lay.mlflow / "artifacts"
    if not lay.runs_local_postgres or not old_db.exists():
        if old_artifacts.is_dir() and any(old_artifacts.iterdir()):
            _upload_artifacts(lay, old_artifacts, step)
        return
    step("carrying MLflow's SQLite store and artifacts over to PostgreSQL and S3 (once)")
    import sqlalchemy
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    source = sqlalchemy.create_engine(f"sqlite:///{old_db}")
    target = sqlalchemy.create_engine(store_uri(platform))
    try:
        with target.connect() as conn:
            has_rows = conn.execute(
                sqlalchemy.text("SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'")
            ).scalar()
            if has_rows and conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar():
                raise PlatformError(
                    f"MLflow's PostgreSQL database already holds runs and {old_db} holds others: not merged",
                    f"keep one: move {old_db} away (its runs are then not carried over) and `up` again",
                )
        # MLflow's own schema, at the installed MLflow's head revision (and its default experiment).
        SqlAlchemyStore(store_uri(platform), "mlflow-artifacts:/")
        src_meta = sqlalchemy.MetaData()
        src_meta.reflect(source)
        dst_meta = sqlalchemy.MetaData()
        dst_meta.reflect(target)
        with source.connect() as src, target.begin() as dst:
            _same_revision(src, dst, old_db)
            tables = [t for t in dst_meta.sorted_tables if t.name != "alembic_version" and t.name in src_meta.tables]
            for table in reversed(tables):  # children first: nothing of the fresh schema stays behind
                dst.execute(table.delete())
            for table in tables:  # parents first
                rows = [dict(r._mapping) for r in src.execute(src_meta.tables[table.name].select())]
                if rows:
                    dst.execute(table.insert(), rows)
            _reset_sequences(dst, dst_meta)
    finally:
        source.dispose()
        target.dispose()
    if old_artifacts.is_dir():
        _upload_artifacts(lay, old_artifacts, step)
    old_db.rename(old_db.with_name("mlflow.db.migrated"))


def _same_revision(src, dst, old_db: Path) -> None:
    import sqlalchemy

    q = sqlalchemy.text("SELECT version_num FROM alembic_version")
    old, new = src.execute(q).scalar(), dst.execute(q).scalar()
    if old != new:
        raise PlatformError(
            f"{old_db} is at MLflow schema {old}, this MLflow creates {new}: not carried over",
            f"upgrade it first: `mlflow db upgrade sqlite:///{old_db}`, then `up` again",
        )


def _reset_sequences(dst, meta) -> None:
    """After explicit ids were inserted, PostgreSQL's serial sequences must continue after them."""
    import sqlalchemy

    for table in meta.sorted_tables:
        for col in table.columns:
            if col.autoincrement is True or (col.primary_key and isinstance(col.type, sqlalchemy.Integer)):
                seq = dst.execute(
                    sqlalchemy.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": col.name}
                ).scalar()
                if seq:
                    dst.execute(
                        sqlalchemy.text(
                            f'SELECT setval(:s, COALESCE((SELECT max("{col.name}") FROM "{table.name}"), 0) + 1, false)'
                        ),
                        {"s": seq},
                    )


def _upload_artifacts(layout: Layout, folder: Path, step) -> None:
    step(f"uploading MLflow artifacts from {folder} to {artifacts_destination(layout)}")
    s3 = _s3(layout)
    ensure_bucket(layout)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{ARTIFACT_PREFIX}/{path.relative_to(folder).as_posix()}"
        s3.upload_file(str(path), layout.spec.aws.bucket, key)
    folder.rename(folder.with_name("artifacts.migrated"))
