#!/usr/bin/env bash
# The main job: install, bring up the whole platform on this machine, run the example ML pipeline,
# prove the platform works, and print where to look.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
uv run airflow-gitops up
uv run airflow-gitops run ml_training_pipeline
uv run airflow-gitops verify
uv run airflow-gitops status
echo
echo "Next: push a DAG to the repository above; open the UI; stop with: uv run airflow-gitops down"
