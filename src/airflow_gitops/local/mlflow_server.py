"""MLflow's tracking server in ONE process: ``python -m airflow_gitops.local.mlflow_server HOST PORT``.

The backend/registry store URI and the artifacts destination come from the environment
(``AIRFLOW_GITOPS_MLFLOW_STORE``, ``AIRFLOW_GITOPS_MLFLOW_ARTIFACTS``): the store URI holds a password.

``mlflow server`` imports MLflow, then spawns ``uvicorn mlflow.server.fastapi_app:app`` as a child that
imports it all again, and stays resident only to forward signals: ~195 MiB PSS and ~10 CPU-seconds
per start for nothing (measured in docs/performance.md). We do what its CLI does — set the server
variables MLflow's CLI passes to its workers (names imported from ``mlflow.server.constants``, so a
rename fails loudly here), initialise the stores, and serve the same FastAPI app with uvicorn in
this process: PostgreSQL store, artifacts proxied to S3 (``local/mlflow_store.py``), job runner off.

It starts with the database and imports MLflow (~2.5 CPU-s) while ``up`` still prepares the store,
then waits for ``up``'s go (``mlflow_store.prepare``) before it opens the store.

Authentication is always on: MLflow's basic-auth app (what ``mlflow server --app-name basic-auth``
serves, ``mlflow.server.auth:create_app``) wraps the same Flask app, so every request but ``/health``
(and MLflow's static files and server-info) needs the platform's MLflow user and password: the REST
API, the model registry, the artifact proxy (which writes into the bucket with the server's own S3
credentials) and the UI. Without it any local user could replace the model serving loads (issue 22).
The user is MLflow's admin; its password is read from a 0600 file (``AUTH_PASSWORD_FILE_ENV``) and set
in MLflow's user database (``basic_auth.db`` in ``AUTH_DIR_ENV``) before the server accepts a request,
also when that database holds another one: the file is the truth. No other user exists, so MLflow's
old default ``admin``/``password1234`` is no login here. The server refuses to start without these.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

from airflow_gitops import keystore
from airflow_gitops.errors import PlatformError
from airflow_gitops.local.mlflow_store import (
    ARTIFACTS_ENV,
    AUTH_DIR_ENV,
    AUTH_PASSWORD_FILE_ENV,
    AUTH_SECRET_KEY_FILE_ENV,
    AUTH_USER_ENV,
    READY_FILE_ENV,
    READY_TOKEN_ENV,
    STORE_ENV,
)

ARTIFACT_ROOT = "mlflow-artifacts:/"  # what `mlflow server --serve-artifacts` resolves the root to
READY_WAIT_S = 600
AUTH_CONFIG = "basic_auth.ini"  # MLflow's name for its auth config (mlflow/server/auth/basic_auth.ini)
AUTH_DB = "basic_auth.db"
MIN_SECRET = 12  # MLflow refuses a shorter password (mlflow.utils.validation._validate_password)
AUTH_CACHE_S = 3600


class Auth:
    """The basic-auth settings from the environment; exits naming what is missing (never a traceback)."""

    def __init__(self, environ: dict[str, str]):
        names = (AUTH_DIR_ENV, AUTH_USER_ENV, AUTH_PASSWORD_FILE_ENV, AUTH_SECRET_KEY_FILE_ENV)
        missing = [n for n in names if not environ.get(n)]
        if missing:
            sys.exit(f"airflow-gitops: MLflow does not start without authentication: {', '.join(missing)} not set")
        self.folder = Path(environ[AUTH_DIR_ENV])
        self.user = environ[AUTH_USER_ENV]
        self.password = _secret(environ[AUTH_PASSWORD_FILE_ENV])
        self.secret_key = _secret(environ[AUTH_SECRET_KEY_FILE_ENV])

    def write_config(self) -> Path:
        """MLflow's auth config (0600, no secret in it): users in ``basic_auth.db``, the platform's user
        its admin, and no permission for any other user unless granted."""
        path, db = self.folder / AUTH_CONFIG, self.folder / AUTH_DB
        try:
            # A planted user database (a link, another user's file) is refused like a planted key file.
            if keystore.check_trusted(db) is None:  # the hashes are for us alone, whatever the umask
                os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            self._write(path, db)
        except PlatformError as err:
            sys.exit(f"airflow-gitops: {err.render()}")
        except OSError as err:
            sys.exit(f"airflow-gitops: MLflow's user database {db} or its config cannot be written: {err}")
        return path

    def _write(self, path: Path, db: Path) -> None:
        keystore.write_private(
            path,
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{db}\n"
            f"admin_username = {self.user}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # A password check is PBKDF2 with 1,000,000 rounds: 269 ms of the server's CPU per request
            # measured, on every call of every task and of serving's polling. Cached once accepted (in
            # this one worker: MLflow's password API invalidates it at once; the file is read at start).
            f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n",
        )


def _secret(path: str) -> str:
    try:
        value = keystore.read_private(Path(path)).decode("utf-8", errors="replace").strip()
    except OSError as err:
        sys.exit(f"airflow-gitops: MLflow's authentication secret {path} cannot be read: {err}")
    except PlatformError as err:
        sys.exit(f"airflow-gitops: {err.render()}")
    if len(value) < MIN_SECRET:
        sys.exit(f"airflow-gitops: MLflow's authentication secret {path} is shorter than {MIN_SECRET} characters")
    return value


def set_admin_password(auth: Auth) -> None:
    """The platform's user is MLflow's admin with the password of the 0600 file, whatever the user
    database held before (MLflow itself only sets it when it creates the user)."""
    from mlflow.server.auth import store as users

    accepted = users.authenticate_user(auth.user, auth.password, use_primary=True)
    if not accepted or not users.get_user(auth.user).is_admin:
        users.update_user(auth.user, password=auth.password, is_admin=True)
        print(f"airflow-gitops: MLflow user {auth.user}: password set from its key file", file=sys.stderr, flush=True)


def wait_until_ready(path: str, token: str, timeout: float = READY_WAIT_S) -> float:
    """Until ``up`` has prepared the store (``mlflow_store.prepare`` wrote ``token`` to ``path``); the
    seconds waited. Exits (supervisord then restarts it) if that takes longer than ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if Path(path).read_text() == token:
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            sys.exit(f"airflow-gitops: MLflow's store was not prepared within {timeout:.0f} s ({path})")
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    host, port = argv
    store, artifacts = os.environ[STORE_ENV], os.environ[ARTIFACTS_ENV]
    auth = Auth(dict(os.environ))
    from mlflow.environment_variables import (
        _MLFLOW_IN_JOB_EXECUTOR,
        _MLFLOW_SERVER_BOOT_ID,
        _MLFLOW_SGI_NAME,
        MLFLOW_AUTH_ADMIN_PASSWORD,
        MLFLOW_AUTH_CONFIG_PATH,
        MLFLOW_FLASK_SERVER_SECRET_KEY,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    )
    from mlflow.server import constants as c

    os.environ.update(
        {
            c.BACKEND_STORE_URI_ENV_VAR: store,
            c.REGISTRY_STORE_URI_ENV_VAR: store,
            c.ARTIFACT_ROOT_ENV_VAR: ARTIFACT_ROOT,
            c.SERVE_ARTIFACTS_ENV_VAR: "true",
            c.ARTIFACTS_DESTINATION_ENV_VAR: artifacts,
            _MLFLOW_SGI_NAME.name: "uvicorn",
            _MLFLOW_SERVER_BOOT_ID.name: uuid.uuid4().hex,
            _MLFLOW_IN_JOB_EXECUTOR.name: "false",
            # No background job runner: it forks ~8 huey workers (~250 MB each) that nothing here uses.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name: "false",
            # The basic-auth app: its config, and the key of its CSRF tokens (set in this process only).
            MLFLOW_AUTH_CONFIG_PATH.name: str(auth.write_config()),
            MLFLOW_FLASK_SERVER_SECRET_KEY.name: auth.secret_key,
            # What MLflow creates its admin with when the user database has none (read at import).
            MLFLOW_AUTH_ADMIN_PASSWORD.name: auth.password,
        }
    )
    import mlflow.server.auth  # noqa: F401 - the basic-auth app: imported while `up` prepares
    import uvicorn
    from mlflow.server.handlers import initialize_backend_stores

    os.environ.pop(MLFLOW_AUTH_ADMIN_PASSWORD.name)  # read into MLflow's auth config: no longer needed

    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        waited = wait_until_ready(ready, os.environ[READY_TOKEN_ENV])
        print(f"airflow-gitops: MLflow imported; its store was ready {waited:.1f} s later", file=sys.stderr, flush=True)
    initialize_backend_stores(store, store, ARTIFACT_ROOT)
    # The Flask app behind authentication, as the FastAPI app uvicorn serves (the SGI name above says so).
    app = mlflow.server.auth.create_app()
    set_admin_password(auth)  # before the first request is accepted

    uvicorn.run(app, host=host, port=int(port), workers=1, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
