"""MLflow's tracking server in ONE process: ``python -m airflow_gitops.local.mlflow_server HOST PORT``.

The backend/registry store URI and the artifacts destination come from the environment
(``AIRFLOW_GITOPS_MLFLOW_STORE``, ``AIRFLOW_GITOPS_MLFLOW_ARTIFACTS``): the store URI holds a password.

``mlflow server`` imports MLflow, then spawns ``uvicorn mlflow.server.fastapi_app:app`` as a child that
imports it all again, and stays resident only to forward signals: ~195 MiB PSS and ~10 CPU-seconds
per start for nothing (measured in docs/performance.md). We do what its CLI does — set the server
variables MLflow's CLI passes to its workers (names imported from ``mlflow.server.constants``, so a
rename fails loudly here), initialise the stores, and serve the same FastAPI app with uvicorn in
this process: PostgreSQL store, artifacts proxied to S3 (``local/mlflow_store.py``), job runner off.
"""

from __future__ import annotations

import os
import sys
import uuid

from airflow_gitops.local.mlflow_store import ARTIFACTS_ENV, STORE_ENV

ARTIFACT_ROOT = "mlflow-artifacts:/"  # what `mlflow server --serve-artifacts` resolves the root to


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
    from mlflow.server.handlers import initialize_backend_stores

    initialize_backend_stores(store, store, ARTIFACT_ROOT)
    import uvicorn

    uvicorn.run("mlflow.server.fastapi_app:app", host=host, port=int(port), workers=1, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
