#!/usr/bin/env bash
# Install everything the tests need (PostgreSQL, sshd, the locked Python environment, a Kubernetes control
# plane built from source once into ~/.cache/airflow-gitops/kube), lint, test.
set -euo pipefail
export AIRFLOW_GITOPS_WITH_SSHD=1
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
if command -v go >/dev/null; then
  # The first build takes tens of minutes on 2 cores (then it is a no-op): before pytest, not inside a test.
  bash scripts/kube-up.sh build
else
  echo "Go is not installed: the tests against a real Kubernetes API server skip (they fail when CI=true)." >&2
fi
uv run ruff check .
uv run pytest "$@"
