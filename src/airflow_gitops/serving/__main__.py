"""``python -m airflow_gitops.serving HOST PORT``: the serving process (both targets).

Configuration from the environment (``airflow_gitops.serving.ENV_*`` and ``contract.dag_runtime_env``:
MLflow URI, AWS profile/config). The webhook secret comes from a 0600 file, never argv or env.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from . import (
    DEFAULT_ALIAS,
    DEFAULT_WEBHOOK_NAME,
    ENV_ALIAS,
    ENV_LOAD_IN_WORKER,
    ENV_MAX_BODY,
    ENV_MODEL,
    ENV_POLL,
    ENV_WEBHOOK_NAME,
    ENV_WEBHOOK_SECRET_FILE,
    ENV_WEBHOOK_URL,
)


def config_from_env(env=os.environ):
    from .app import Config

    model = env.get(ENV_MODEL)
    if not model:
        sys.exit(f"airflow-gitops serving: {ENV_MODEL} is not set (the registered model to serve)")
    secret = None
    secret_file = env.get(ENV_WEBHOOK_SECRET_FILE)
    if secret_file:
        try:
            secret = Path(secret_file).read_text().strip() or None
        except OSError as exc:
            sys.exit(f"airflow-gitops serving: cannot read the webhook secret file {secret_file}: {exc.strerror}")
    return Config(
        model=model,
        alias=env.get(ENV_ALIAS) or DEFAULT_ALIAS,
        poll_interval=float(env.get(ENV_POLL) or 10),
        max_body_bytes=int(env.get(ENV_MAX_BODY) or 1_048_576),
        webhook_secret=secret,
        webhook_url=env.get(ENV_WEBHOOK_URL) or None,
        webhook_name=env.get(ENV_WEBHOOK_NAME) or DEFAULT_WEBHOOK_NAME,
        fetch_in_worker=env.get(ENV_LOAD_IN_WORKER, "1") != "0",
    )


def main(argv: list[str]) -> None:
    host, port = argv
    # A registry that does not answer must not stall the watcher for minutes (MLflow retries 7 times).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    config = config_from_env()
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(config), host=host, port=int(port), access_log=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
