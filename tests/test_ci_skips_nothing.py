"""With CI=true nothing CI can run is skipped: a chart test whose shared/ chart is missing fails with the
reason (run here as CI runs it, in a real pytest subprocess, with AIRFLOW_GITOPS_SHARED pointing nowhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHART_TESTS = [
    "test_declared.py::test_kubernetes_chart_renders_the_pool_step_and_the_env_on_every_pod",
    "test_kubernetes_chart.py::test_kubernetes_chart_git_sync",
]


@pytest.mark.parametrize("node", CHART_TESTS)
def test_a_chart_test_fails_under_ci_when_the_chart_is_missing(tmp_path, node):
    env = {**os.environ, "CI": "true", "AIRFLOW_GITOPS_SHARED": str(tmp_path / "no-shared")}
    env.pop("AIRFLOW_CHART_DIR", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(TESTS / node)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS.parent,
    )
    assert run.returncode == 1, run.stdout[-2000:]
    assert ("1 failed" in run.stdout or "1 error" in run.stdout) and "skipped" not in run.stdout, run.stdout[-2000:]
    assert "AIRFLOW_GITOPS_SHARED" in run.stdout, run.stdout[-2000:]
