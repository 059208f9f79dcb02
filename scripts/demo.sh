#!/usr/bin/env bash
# The main job: install, bring up the whole platform on this machine, run the example ML pipeline,
# prove the platform works, and print where to look.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
uv run airflow-gitops up
uv run airflow-gitops run ml_training_pipeline
uv run airflow-gitops verify
uv run airflow-gitops status
# What to type next, in any shell (uv may live in a cache folder not on PATH: these need no uv).
REPO="$PWD"
echo
echo "Next: push a DAG to the repository above and open the UI. From any shell:"
echo "  status:  cd '$REPO' && .venv/bin/airflow-gitops status"
echo "  stop:    cd '$REPO' && .venv/bin/airflow-gitops down"
