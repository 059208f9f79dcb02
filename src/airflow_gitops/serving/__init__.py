"""Serving: the champion model behind a FastAPI app, hot-swapped when its registry alias moves.

``model.py`` loads and checks one version and validates requests against its signature; ``watcher.py``
follows the alias (MLflow webhook + polling) and swaps; ``fetcher.py`` downloads and first checks a new
version in a worker process (``serving.load_in_worker``); ``webhook.py`` signs/verifies MLflow's webhook
deliveries and registers ours; ``app.py`` is the HTTP API; ``__main__`` runs it under uvicorn.

Imports only ``errors`` of the package: both targets run the same process with the same environment
(:data:`ENV` names it), built from platform.yaml's ``serving:`` section.
"""

from __future__ import annotations

# The environment the serving process reads (both targets set it; MLflow/AWS come from dag_runtime_env).
ENV_MODEL = "MLOPS_REGISTERED_MODEL"
ENV_ALIAS = "AIRFLOW_GITOPS_SERVING_ALIAS"
ENV_POLL = "AIRFLOW_GITOPS_SERVING_POLL_INTERVAL"
ENV_MAX_BODY = "AIRFLOW_GITOPS_SERVING_MAX_BODY_BYTES"
ENV_WEBHOOK_URL = "AIRFLOW_GITOPS_SERVING_WEBHOOK_URL"  # where MLflow reaches this server's /webhook
ENV_WEBHOOK_SECRET_FILE = "AIRFLOW_GITOPS_SERVING_WEBHOOK_SECRET_FILE"  # 0600, never in argv or env
ENV_WEBHOOK_NAME = "AIRFLOW_GITOPS_SERVING_WEBHOOK_NAME"
ENV_LOAD_IN_WORKER = "AIRFLOW_GITOPS_SERVING_LOAD_IN_WORKER"  # "1" (default) or "0": fetcher.py
WEBHOOK_PATH = "/webhook/mlflow"
DEFAULT_ALIAS = "champion"
DEFAULT_WEBHOOK_NAME = "airflow-gitops-serving"  # the webhook registered with MLflow (one per server name)


def process_env(spec) -> dict[str, str]:
    """What the serving process reads from platform.yaml's ``serving:`` section, on every target (MLflow
    and AWS come from ``contract.dag_runtime_env``, the webhook's URL and secret file from the target)."""
    serving = spec.serving
    return {
        ENV_MODEL: spec.serving_model,
        ENV_ALIAS: serving.alias,
        ENV_POLL: f"{serving.poll_interval:g}",
        ENV_MAX_BODY: str(serving.max_body_bytes),
        ENV_LOAD_IN_WORKER: "1" if serving.load_in_worker else "0",
    }
