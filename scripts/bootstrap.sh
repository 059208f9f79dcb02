#!/usr/bin/env bash
# Installs what airflow-gitops needs on a Debian-like machine, then the Python environment (uv.lock).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ "${AIRFLOW_GITOPS_WITH_SSHD:-0}" = 1 ] && [ ! -x /usr/sbin/sshd ]; then need_apt+=(openssh-server); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "error: missing ${need_apt[*]}. Fix: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi
if ! command -v uv >/dev/null; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gitops/uv"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "installing uv into $tools"
    if ! python3 -m venv "$tools" 2>/dev/null; then
      # Debian's python3 ships venv separately.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$tools"
      else
        echo "error: python3 cannot create a virtual environment. Fix: sudo apt-get install -y python3-venv" >&2
        exit 1
      fi
    fi
    "$tools/bin/pip" install -q uv
  fi
  export PATH="$tools/bin:$PATH"
fi
# Byte-compile at install: every platform process then skips compiling ~2,700 modules at start
# (start-up CPU roughly halves; docs/performance.md).
# As root, DAG code runs as a user of its own (local.task_user), who must be able to run this environment:
# build it from a Python outside /root (a pyenv or uv-managed one under /root is not readable to others).
python=3.11
if [ "$(id -u)" = 0 ]; then
  for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11; do
    if [ -x "$candidate" ]; then python=$candidate; break; fi
  done
  if [ "$python" = 3.11 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's python3.11 (the task user runs the environment built from it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 >/dev/null
    python=/usr/bin/python3.11
  fi
fi
uv sync --frozen --python "$python" --compile-bytecode -q
