#!/usr/bin/env bash
# Install everything the tests need (PostgreSQL, sshd, the locked Python environment, a Kubernetes control
# plane and a real node built from source once into ~/.cache/airflow-gitops/kube, containerd and the image
# builders from Debian), lint, test.
set -euo pipefail
export AIRFLOW_GITOPS_WITH_SSHD=1
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
# The real Kubernetes node (containerd + runc + CNI), the image builds (buildah, mmdebstrap, umoci,
# skopeo) and strace (a test watches fsync calls) come from Debian's packages.
node_pkgs=()
for p in containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins iptables:iptables \
  buildah:buildah umoci:umoci skopeo:skopeo mmdebstrap:mmdebstrap /bin/busybox:busybox-static strace:strace; do
  cmd=${p%%:*} pkg=${p#*:}
  if [[ $cmd == /* ]]; then [ -x "$cmd" ] || node_pkgs+=("$pkg"); else command -v "$cmd" >/dev/null || node_pkgs+=("$pkg"); fi
done
if [ ${#node_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages for the real test node and the image builds: ${node_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${node_pkgs[@]}" >/dev/null
  else
    echo "missing ${node_pkgs[*]}: the real-node tests skip (they fail when CI=true). Fix: sudo apt-get install -y ${node_pkgs[*]}" >&2
  fi
fi
if command -v go >/dev/null; then
  # The first build takes tens of minutes on 2 cores (then it is a no-op): before pytest, not inside a test.
  bash scripts/kube-up.sh build
else
  echo "Go is not installed: the tests against a real Kubernetes API server skip (they fail when CI=true)." >&2
fi
uv run ruff check .
uv run pytest "$@"
