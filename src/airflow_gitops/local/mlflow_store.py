"""MLflow as the series runs it in production (step 3): runs and models in PostgreSQL, artifacts in S3.

The local MLflow server keeps its backend and registry store in its own database and role of the
platform's PostgreSQL (``mlflow``/``mlflow``, password generated once), and its artifacts in the
platform's S3 bucket under ``mlflow-artifacts/``, served through the tracking server
(``mlflow-artifacts:/`` URIs, as ``mlflow server --serve-artifacts`` does). With an external
``database.url`` there is no platform PostgreSQL to give it a database: the store stays SQLite in the
state directory (``mlflow/mlflow.db``), the artifacts still go to S3.

A state directory from before (SQLite store and artifacts on disk under ``mlflow/``) is carried over
once on ``up``: every table copied into PostgreSQL, every artifact uploaded to the same relative key in
S3 (so ``mlflow-artifacts:/`` URIs stay valid), the old files kept as ``*.migrated``. An ``up`` that
stopped half-way is finished by the next one; PostgreSQL data is never replaced (:func:`migrate_legacy`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .. import contract, keystore
from ..errors import PlatformError
from ..serving import DEFAULT_WEBHOOK_NAME
from .layout import Layout

if TYPE_CHECKING:
    from .parts import Parts

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
# Authentication (MLflow's basic-auth app; mlflow_server.py): the folder of its user database and
# config, the platform's MLflow user, and the 0600 files of that user's password and of the app's
# CSRF key (paths, never the values: the server reads them itself).
AUTH_DIR_ENV = "AIRFLOW_GITOPS_MLFLOW_AUTH_DIR"
AUTH_USER_ENV = "AIRFLOW_GITOPS_MLFLOW_USER"
AUTH_PASSWORD_FILE_ENV = "AIRFLOW_GITOPS_MLFLOW_PASSWORD_FILE"
AUTH_SECRET_KEY_FILE_ENV = "AIRFLOW_GITOPS_MLFLOW_SECRET_KEY_FILE"


def legacy_store(layout: Layout) -> Path:
    return layout.mlflow / "mlflow.db"


def db_password(layout: Layout) -> str:
    return keystore.ensure(layout.secrets / DB_PASSWORD, keystore._password)


def store_uri(platform: Parts) -> str:
    if platform.layout.runs_local_postgres:
        return platform.postgres.url(DB_NAME, DB_USER, db_password(platform.layout))
    return f"sqlite:///{legacy_store(platform.layout)}"


def artifacts_destination(layout: Layout) -> str:
    return f"s3://{layout.spec.aws.bucket}/{ARTIFACT_PREFIX}"


def aws_env(layout: Layout) -> dict[str, str]:
    """What boto3 needs to reach the platform's S3 (the same files DAG code uses)."""
    env = contract.aws_profile_env(layout.spec, (str(layout.aws_credentials), str(layout.aws_config)))
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


def auth_env(layout: Layout) -> dict[str, str]:
    """What the server's basic-auth app needs: every request but ``/health`` authenticated as the
    platform's MLflow user (its password generated once, 0600), users kept in ``mlflow/basic_auth.db``."""
    spec = layout.spec
    keystore.mlflow_password(spec)  # both generated 0600 once
    keystore.mlflow_flask_secret_key(spec)
    return {
        AUTH_DIR_ENV: str(layout.mlflow),
        AUTH_USER_ENV: keystore.MLFLOW_USER,
        AUTH_PASSWORD_FILE_ENV: str(spec.secrets_dir / keystore.MLFLOW_PASSWORD),
        AUTH_SECRET_KEY_FILE_ENV: str(spec.secrets_dir / keystore.MLFLOW_FLASK_SECRET_KEY),
    }


def env_file(platform: Parts) -> str:
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
        **auth_env(lay),
    }
    keystore.write_private(path, json.dumps(env))
    return str(path)


def env_path(layout: Layout) -> Path:
    return layout.supervisor / "mlflow.env.json"


def ready_file(layout: Layout) -> Path:
    return layout.mlflow / "store.ready"


def prepare(platform: Parts, step) -> None:
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


def migrate_legacy(platform: Parts, step) -> None:
    """Carry a SQLite store and on-disk artifacts over to PostgreSQL and S3, once.

    Every step can be repeated: the copy commits together with a record of the SQLite file's
    SHA-256 (:data:`CARRIED_OVER`), so an ``up`` that stopped after that commit (before the artifacts
    were uploaded or ``mlflow.db`` renamed) is finished by the next one, and the same file copied back
    later is recognised. A store PostgreSQL does not know yet is copied only into a database without
    data of its own (:func:`_held_data`); otherwise nothing changes and one message names both. The
    old files are renamed, never over an earlier copy (:func:`_set_aside`)."""
    lay = platform.layout
    old_db, old_artifacts = legacy_store(lay), lay.mlflow / "artifacts"
    if not lay.runs_local_postgres or not old_db.exists():
        if old_artifacts.is_dir() and any(old_artifacts.iterdir()):
            _upload_artifacts(lay, old_artifacts, step)
        return
    import sqlalchemy

    fingerprint = _sha256(old_db)
    target = sqlalchemy.create_engine(store_uri(platform))
    try:
        with target.connect() as conn:
            done = _carried_over(conn, fingerprint)
        if done:
            step(f"{old_db} is in PostgreSQL already (carried over by an earlier `up`): finishing the carry-over")
        else:
            step("carrying MLflow's SQLite store and artifacts over to PostgreSQL and S3 (once)")
            _copy_store(platform, old_db, target, fingerprint)
    finally:
        target.dispose()
    if old_artifacts.is_dir():
        _upload_artifacts(lay, old_artifacts, step)
    _set_aside(old_db)


# Where the carry-over records the SQLite files it copied: its own schema in MLflow's database (MLflow
# sees only ``public``), written in the copy's transaction, so the record exists exactly when the copy does.
CARRIED_OVER = "airflow_gitops.carried_over"

# Rows a store holds that nobody put there: MLflow's Default experiment and workspace (a fresh schema
# has them) and the serving component's webhook (registered again at every start).
_NOT_DATA = {
    "experiments": "experiment_id <> 0",
    "workspaces": "name <> 'default'",
    "webhooks": f"name <> '{DEFAULT_WEBHOOK_NAME}'",
    "webhook_events": f"webhook_id NOT IN (SELECT webhook_id FROM webhooks WHERE name = '{DEFAULT_WEBHOOK_NAME}')",
}


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _carried_over(conn, fingerprint: str) -> bool:
    import sqlalchemy

    if conn.execute(sqlalchemy.text("SELECT to_regclass(:t)"), {"t": CARRIED_OVER}).scalar() is None:
        return False
    q = sqlalchemy.text(f"SELECT count(*) FROM {CARRIED_OVER} WHERE sha256 = :h")
    return bool(conn.execute(q, {"h": fingerprint}).scalar())


def _held_data(conn) -> list[str]:
    """``table (n rows)`` for each of MLflow's tables in PostgreSQL holding something a user or their
    pipelines made (every row except :data:`_NOT_DATA`'s): empty when there is nothing to lose."""
    import sqlalchemy

    held = []
    for name in sorted(sqlalchemy.inspect(conn).get_table_names()):  # the public schema: MLflow's
        if name == "alembic_version":
            continue
        where = f" WHERE {_NOT_DATA[name]}" if name in _NOT_DATA else ""
        rows = conn.execute(sqlalchemy.text(f'SELECT count(*) FROM "{name}"{where}')).scalar()
        if rows:
            held.append(f"{name} ({rows} rows)")
    return held


def _refuse_to_merge(conn, old_db: Path) -> None:
    held = _held_data(conn)
    if held:
        raise PlatformError(
            f"{old_db} holds an MLflow store that is not in PostgreSQL, and MLflow's PostgreSQL database "
            f"`{DB_NAME}` already holds data of its own ({', '.join(held)}): not merged, nothing copied or deleted",
            f"keep one: move {old_db} out of {old_db.parent} (its runs are then not carried over) and `up` again, "
            f"or empty MLflow's PostgreSQL database first to carry {old_db.name} over instead",
        )


def _copy_store(platform: Parts, old_db: Path, target, fingerprint: str) -> None:
    """Every table of ``old_db`` into MLflow's PostgreSQL schema, in one transaction with its record."""
    import sqlalchemy
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with target.connect() as conn:
        _refuse_to_merge(conn, old_db)  # before MLflow opens (and so checks) a schema holding data
    source = sqlalchemy.create_engine(f"sqlite:///{old_db}")
    try:
        # MLflow's own schema, at the installed MLflow's head revision (and its default experiment).
        SqlAlchemyStore(store_uri(platform), "mlflow-artifacts:/")
        src_meta = sqlalchemy.MetaData()
        src_meta.reflect(source)
        dst_meta = sqlalchemy.MetaData()
        dst_meta.reflect(target)
        with source.connect() as src, target.begin() as dst:
            _same_revision(src, dst, old_db)
            _refuse_to_merge(dst, old_db)  # again, in the transaction that deletes
            tables = [t for t in dst_meta.sorted_tables if t.name != "alembic_version" and t.name in src_meta.tables]
            for table in reversed(tables):  # children first: nothing of the fresh schema stays behind
                dst.execute(table.delete())
            for table in tables:  # parents first
                rows = [dict(r._mapping) for r in src.execute(src_meta.tables[table.name].select())]
                if rows:
                    dst.execute(table.insert(), rows)
            _reset_sequences(dst, dst_meta)
            schema = CARRIED_OVER.split(".")[0]
            dst.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            dst.execute(
                sqlalchemy.text(
                    f"CREATE TABLE IF NOT EXISTS {CARRIED_OVER} (sha256 text PRIMARY KEY, source text NOT NULL, "
                    "carried_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            dst.execute(
                sqlalchemy.text(f"INSERT INTO {CARRIED_OVER} (sha256, source) VALUES (:h, :s) ON CONFLICT DO NOTHING"),
                {"h": fingerprint, "s": str(old_db)},
            )
    finally:
        source.dispose()


def _set_aside(path: Path) -> Path:
    """Rename a carried-over ``path`` to ``<name>.migrated`` (``.migrated.2``, ... when an earlier copy
    is there: a store copied back and carried over again never replaces the first one)."""
    for n in range(1, 10_000):
        dest = path.with_name(f"{path.name}.migrated" + (f".{n}" if n > 1 else ""))
        if not dest.exists() and not dest.is_symlink():
            path.rename(dest)
            return dest
    raise PlatformError(f"{path} cannot be set aside: too many {path.name}.migrated.* next to it", "remove old ones")


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
    _set_aside(folder)
