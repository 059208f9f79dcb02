"""`verify` and `doctor` on the real local platform (tests/conftest.py `local_platform`)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time

import pytest
from rich.console import Console

from airflow_gitops.checks.doctor import doctor_command, run_doctor
from airflow_gitops.checks.verify import run_verify_local
from airflow_gitops.keystore import all_secret_values
from airflow_gitops.local.platform import LocalTarget

pytestmark = pytest.mark.platform


def _rows(rows):
    return {r.name: r for r in rows}


def test_doctor_passes_on_running_platform(local_platform, capsys):
    spec = local_platform.spec
    rows = _rows(run_doctor(LocalTarget(spec)))
    # The local S3 endpoint has no STS: its credentials are proven by a signed request (and a refused wrong one).
    for name in (
        "database.reachable",
        "database.migrations",
        "fernet.decrypts",
        "aws.s3_credentials",
        "git.dag_imports",
    ):
        assert rows[name].status == "ok", rows[name]
    assert all(r.status != "fail" for r in rows.values()), [r for r in rows.values() if r.status == "fail"]
    code = doctor_command(LocalTarget(spec), as_json=True, console=Console(file=io.StringIO()))
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["ok"] is True
    assert not any(secret in out for secret in all_secret_values(spec))


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_verify_passes_on_healthy_platform_with_probe(local_platform):
    repo = local_platform.spec.local_repo
    refs_before = _git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
    rows = _rows(run_verify_local(local_platform, probe=True))
    failed = [r for r in rows.values() if r.status == "fail"]
    assert not failed, failed
    assert rows["verify.dag_sync"].status == "ok"
    assert rows["verify.probe"].status == "ok" and " s after push" in rows["verify.probe"].saw
    # The probe never touched dags.branch, and its marker commit is referenced by nothing afterwards.
    assert _git(repo, "for-each-ref", "--format=%(refname) %(objectname)") == refs_before
    marker = re.search(r"marker ([0-9a-f]{12})", rows["verify.probe"].saw).group(1)
    assert marker not in _git(repo, "rev-list", "--all")
    assert "PostgreSQL" in rows["verify.postgres"].saw
    assert rows["task.aws_identity"].status == "ok" and rows["task.mlflow"].status == "ok"


def test_verify_names_the_stopped_component(local_platform):
    platform = local_platform
    platform.supervisor.stop("triggerer")
    try:
        rows = _rows(run_verify_local(platform, probe=False))
        r = rows["verify.component.triggerer"]
        assert r.status == "fail" and "not healthy" in r.saw and "airflow-gitops logs triggerer" in r.fix
    finally:
        platform.supervisor.start("triggerer")
        deadline = time.monotonic() + 120
        while not platform.component_health().get("triggerer") and time.monotonic() < deadline:
            time.sleep(1)
    assert platform.component_health().get("triggerer")
