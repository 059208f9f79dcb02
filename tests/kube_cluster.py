"""A real Kubernetes control plane for tests (pytest plugin module): ``scripts/kube-up.sh`` runs etcd,
kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1, with kwok simulating the
nodes (pods of Deployments/StatefulSets become Running+Ready, pods of Jobs Succeeded; no container
runtime, nothing really runs). It also provides helm and kubectl of the matching version.

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
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")


@dataclass(frozen=True)
class KubeCluster:
    dir: Path  # state, pid and log files of every component
    kubeconfig: Path  # admin (system:masters) kubeconfig, certificates embedded
    bin_dir: Path
    helm: Path
    kubectl: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: KUBECONFIG set, ``bin_dir`` (helm, kubectl) first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env


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
    rc, out = _kube_up(config, "start", str(state))
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
        )
    finally:
        subprocess.run(["bash", str(KUBE_UP), "stop", str(state)], capture_output=True)
