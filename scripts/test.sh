#!/usr/bin/env bash
# Install everything the tests need (PostgreSQL, sshd, the locked Python environment), lint, test.
set -euo pipefail
export AIRFLOW_GITOPS_WITH_SSHD=1
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
uv run ruff check .
uv run pytest "$@"
