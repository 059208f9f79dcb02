"""A real Kubernetes control plane for tests (pytest plugin module): ``scripts/kube-up.sh`` runs etcd,
kube-apiserver, kube-controller-manager and kube-scheduler, with kwok simulating two nodes (pods of
Deployments/StatefulSets become Running+Ready, pods of Jobs Succeeded; nothing really runs) and, where
the machine allows (root, containerd, runc, the CNI plugins), a REAL node ``agk-node``: containerd +
runc, a kubelet, kube-proxy and CoreDNS, on a private bridge (scripts/kube-node.sh). It also provides
helm and kubectl of the matching version.

The real node is tainted: only pods that tolerate it and select it (:data:`REAL_NODE_POD_SPEC`) run there,
so the kwok tests are unchanged. ``kube_node`` gives the cluster and requires its real node.

``kube_cluster`` (session scope) starts one such cluster in a temporary folder and yields a
:class:`KubeCluster` (``.kubeconfig``, ``.helm``, ``.kubectl``, ``.bin_dir``, ``.env()``); the cluster
is stopped at the end of the session. The binaries are built from source with Go on first use (tens
of minutes on 2 cores) into ``${AIRFLOW_GITOPS_CACHE:-~/.cache/airflow-gitops}/kube/`` and reused.

Without Go and without built binaries the fixture skips, printing why, unless ``CI=true`` or
``AIRFLOW_GITOPS_REQUIRE_KUBE=1``: then it fails. A failing start always fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUBE_UP = ROOT / "scripts" / "kube-up.sh"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "kwok",
    "helm",
    "coredns",
    "pause",
)
NODE_NAME = "agk-node"
# What a pod needs to run on the real node (and nowhere else): scripts/kube-node.sh's label and taint.
REAL_NODE_POD_SPEC = {
    "nodeSelector": {"airflow-gitops.dev/node": "real"},
    "tolerations": [{"key": "airflow-gitops.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
BUSYBOX_IMAGE = "localhost/airflow-gitops/busybox:debian12"  # imported into the real node by kube-up.sh
NODE_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip", "umoci", "skopeo", "nsenter")


@dataclass(frozen=True)
class RealNode:
    """The real node of a cluster (scripts/kube-node.sh's DIR/node/env)."""

    name: str
    bridge: str
    pod_cidr: str
    gateway: str  # the node's IP: the API server, CoreDNS and the host services pods use listen here


def node_missing() -> str | None:
    """Why this machine cannot run the real node, or None."""
    if os.geteuid() != 0:
        return "the real node needs root (containerd, a bridge, iptables)"
    missing = [c for c in NODE_COMMANDS if shutil.which(c) is None]
    plugins = [f"/usr/lib/cni/{p}" for p in ("bridge", "host-local", "loopback", "portmap")]
    missing += [p for p in plugins if not os.access(p, os.X_OK)]
    if missing:
        return (
            f"the real node needs {', '.join(missing)}: apt-get install -y containerd runc "
            "containernetworking-plugins iptables iproute2 umoci skopeo busybox-static"
        )
    return None


def other_real_node() -> str | None:
    """Why this session cannot start a real node because another one runs here (one at a time: two
    kube-proxies would fight over the machine's iptables rules), or None."""
    for pid in subprocess.run(["pgrep", "-x", "kube-proxy"], capture_output=True, text=True).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        conf = next((a.decode() for a in argv if a.endswith(b"/node/kube-proxy.yaml")), "an unknown cluster")
        return f"another real node runs on this machine ({conf.removesuffix('/node/kube-proxy.yaml')})"
    return None


@dataclass(frozen=True)
class KubeCluster:
    dir: Path  # state, pid and log files of every component
    kubeconfig: Path  # admin (system:masters) kubeconfig, certificates embedded
    bin_dir: Path
    helm: Path
    kubectl: Path
    node: RealNode | None = None  # None: kwok nodes only (see node_missing())

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: KUBECONFIG set, ``bin_dir`` (helm, kubectl) first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def import_images(self, *archives: Path) -> None:
        """Import docker-archives (named by their RepoTags) into the real node's containerd."""
        proc = subprocess.run(
            ["bash", str(KUBE_UP), "import", str(self.dir), *map(str, archives)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"kube-up.sh import failed: {proc.stderr[-2000:]}"


SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def machine_state(state: Path) -> dict[str, list[str]]:
    """What a real node changes on the machine (links, iptables rules, mounts, network namespaces, cgroups,
    sysctls), to compare before start and after stop."""

    def run(*cmd: str) -> list[str]:
        if shutil.which(cmd[0]) is None:
            return []
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()

    rules = [
        f"{ipt} {line}"
        for ipt in ("iptables-save", "ip6tables-save")
        for line in run(ipt)
        if "KUBE" in line or "AGK" in line or "airflow-gitops" in line
    ]
    links = [
        line.split(":")[1].strip() for line in run("ip", "-o", "link", "show") if ": agk" in line or ": veth" in line
    ]
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(state) in line or "/netns/" in line
    ]
    netns = sorted(p.name for p in Path("/run/netns").iterdir()) if Path("/run/netns").is_dir() else []
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/agk*"))
    sysctls = [f"{k}={Path('/proc/sys', k).read_text().strip()}" for k in SYSCTLS if Path("/proc/sys", k).exists()]
    return {"iptables": rules, "links": links, "mounts": mounts, "netns": netns, "cgroups": cgroups, "sysctls": sysctls}


def _read_node(state: Path) -> RealNode | None:
    env_file = state / "node" / "env"
    if not env_file.is_file():
        return None
    values = dict(line.split("=", 1) for line in env_file.read_text().split() if "=" in line)
    return RealNode(name=NODE_NAME, bridge=values["BRIDGE"], pod_cidr=values["POD_CIDR"], gateway=values["GATEWAY"])


def kube_required() -> bool:
    """True when a missing cluster must fail the run rather than skip (CI, or asked for)."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("AIRFLOW_GITOPS_REQUIRE_KUBE", "") not in (
        "",
        "0",
    )


def _say(config: pytest.Config, line: str) -> None:
    """Print a line on the terminal now, through pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line)


def _kube_up(config: pytest.Config, *args: str) -> tuple[int, str]:
    """Run scripts/kube-up.sh ARGS, relaying its output line by line (a first build takes long)."""
    proc = subprocess.Popen(
        ["bash", str(KUBE_UP), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        _say(config, line.rstrip("\n"))
    return proc.wait(), "".join(lines)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    config = request.config
    bin_dir = Path(
        subprocess.run(["bash", str(KUBE_UP), "bin-dir"], capture_output=True, text=True, check=True).stdout.strip()
    )
    built = all(os.access(bin_dir / b, os.X_OK) for b in BINARIES)
    if not built and shutil.which("go") is None:
        reason = (
            "kube_cluster: Go is not installed and the Kubernetes binaries are not built in "
            f"{bin_dir}; install Go (apt-get install -y golang-go, or https://go.dev/doc/install) "
            "and run scripts/kube-up.sh build"
        )
        if kube_required():
            pytest.fail(reason + " (CI=true or AIRFLOW_GITOPS_REQUIRE_KUBE is set: failing instead of skipping)")
        _say(config, "SKIP " + reason)
        pytest.skip(reason)
    if not built:
        _say(config, f"kube_cluster: building the Kubernetes binaries into {bin_dir} (first time: tens of minutes)")
    state = tmp_path_factory.mktemp("kube")
    why_no_node = node_missing() or other_real_node()
    if why_no_node is None:
        args = ("start", str(state), "--real-node")
    else:
        args = ("start", str(state))
        if kube_required():
            pytest.fail(f"kube_cluster: {why_no_node} (CI=true or AIRFLOW_GITOPS_REQUIRE_KUBE is set)", pytrace=False)
        _say(config, f"kube_cluster: kwok nodes only, no real node: {why_no_node}")
    before = machine_state(state)
    rc, out = _kube_up(config, *args)
    if rc != 0:
        # start stops whatever it started when it fails; stop again in case it was interrupted.
        subprocess.run(["bash", str(KUBE_UP), "stop", str(state)], capture_output=True)
        tail = "\n".join(out.splitlines()[-20:])
        pytest.fail(f"kube_cluster: scripts/kube-up.sh start {state} failed (exit {rc}):\n{tail}", pytrace=False)
    try:
        yield KubeCluster(
            dir=state,
            kubeconfig=state / "kubeconfig",
            bin_dir=bin_dir,
            helm=bin_dir / "helm",
            kubectl=bin_dir / "kubectl",
            node=_read_node(state),
        )
    finally:
        subprocess.run(["bash", str(KUBE_UP), "stop", str(state)], capture_output=True)
        # stop must leave the machine as it found it (an error at teardown otherwise)
        # (compared only when this session ran the real node: another session's node changes it meanwhile)
        after = machine_state(state) if why_no_node is None else before
        left = {k: sorted(set(after[k]) - set(before[k])) for k in after if set(after[k]) - set(before[k])}
        assert not left, f"scripts/kube-up.sh stop {state} left the machine changed: {left}"
        # Gone since the start: another cluster's teardown finishing meanwhile (a run started right after
        # one that was still stopping), not ours to keep; said, not failed.
        gone = {k: sorted(set(before[k]) - set(after[k])) for k in after if set(before[k]) - set(after[k])}
        if gone:
            _say(config, f"kube_cluster: gone from the machine while this session ran (not ours): {gone}")


@pytest.fixture(scope="session")
def kube_node(kube_cluster: KubeCluster) -> KubeCluster:
    """The session's cluster, with its real node (skips, saying why, where the machine cannot run one;
    fails instead under CI=true or AIRFLOW_GITOPS_REQUIRE_KUBE)."""
    if kube_cluster.node is None:
        reason = f"kube_node: no real node in this cluster: {node_missing() or 'kube-up.sh started none'}"
        if kube_required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return kube_cluster
