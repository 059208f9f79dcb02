#!/usr/bin/env bash
# The main job: install, bring up the whole platform on this machine, run the example ML pipeline,
# prove the platform works, and print where to look.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
uv run airflow-gitops up
uv run airflow-gitops run ml_training_pipeline
uv run airflow-gitops verify
uv run airflow-gitops status
# The champion, served: a prediction on the model's own input example.
echo
echo "The champion model, served (hot-swapped when the pipeline promotes a better one):"
uv run airflow-gitops predict
SERVING_URL=$(uv run airflow-gitops status --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["urls"]["Model serving"])')
EXAMPLE=$(.venv/bin/python -c 'import httpx, json, sys; print(json.dumps(httpx.get(sys.argv[1] + "/model").json()["served"]["example"][:1]))' "$SERVING_URL")
# What to type next, in any shell (uv may live in a cache folder not on PATH: these need no uv).
REPO="$PWD"
echo
echo "Next: push a DAG to the repository above and open the UI. From any shell:"
echo "  status:  cd '$REPO' && .venv/bin/airflow-gitops status"
echo "  predict: cd '$REPO' && .venv/bin/airflow-gitops predict"
echo "  curl:    curl -s -X POST $SERVING_URL/predict -H 'Content-Type: application/json' -d '$EXAMPLE'"
echo "  stop:    cd '$REPO' && .venv/bin/airflow-gitops down"
