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
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

from airflow_gitops.local.mlflow_store import ARTIFACTS_ENV, READY_FILE_ENV, READY_TOKEN_ENV, STORE_ENV

ARTIFACT_ROOT = "mlflow-artifacts:/"  # what `mlflow server --serve-artifacts` resolves the root to
READY_WAIT_S = 600


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
    from mlflow.environment_variables import (
        _MLFLOW_IN_JOB_EXECUTOR,
        _MLFLOW_SERVER_BOOT_ID,
        _MLFLOW_SGI_NAME,
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
        }
    )
    import mlflow.server.fastapi_app  # noqa: F401 - what uvicorn serves: imported while `up` prepares
    import uvicorn
    from mlflow.server.handlers import initialize_backend_stores

    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        waited = wait_until_ready(ready, os.environ[READY_TOKEN_ENV])
        print(f"airflow-gitops: MLflow imported; its store was ready {waited:.1f} s later", file=sys.stderr, flush=True)
    initialize_backend_stores(store, store, ARTIFACT_ROOT)

    uvicorn.run("mlflow.server.fastapi_app:app", host=host, port=int(port), workers=1, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
