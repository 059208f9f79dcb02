"""`airflow-gitops deploy` without a cluster: a clear error and nothing applied (helm stubbed, so a bug
cannot reach a real helm). Deploying to a real API server: tests/test_kubernetes_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from k8s_specs import platform
from typer.testing import CliRunner

from airflow_gitops.cli import app
from airflow_gitops.kubernetes import deploy as deploy_mod
from airflow_gitops.kubernetes.manifests import build_secrets
from airflow_gitops.spec import parse_spec

PASSWORD = "hunter2hunter2hunter2"


def write_platform(tmp: Path) -> dict:
    data = platform(tmp, database={"url": f"postgresql://airflow:{PASSWORD}@db:5432/airflow"})
    (tmp / "platform.yaml").write_text(yaml.safe_dump(data))
    return data


@pytest.fixture
def helm_calls(monkeypatch):
    calls = []

    def fake(spec, r, chart, *, dry_run, console):
        calls.append({"dry_run": dry_run, "values": r.values})
        return "would apply 0 chart resources" if dry_run else "applied 0 chart resources"

    monkeypatch.setattr(deploy_mod, "helm_upgrade", fake)
    return calls


def _secret_lines(tmp: Path) -> list[str]:
    spec = parse_spec(yaml.safe_load((tmp / "platform.yaml").read_text()), base_dir=tmp)
    out = []
    for v in build_secrets(spec).values():
        out += [ln.strip() for ln in v.splitlines() if len(ln.strip()) > 15 and "PRIVATE KEY" not in ln]
    return out


@pytest.mark.parametrize("kubeconfig", ["missing", "unreachable"])
def test_kubernetes_deploy_without_cluster_is_clear_and_applies_nothing(tmp_path, monkeypatch, helm_calls, kubeconfig):
    write_platform(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    if kubeconfig == "missing":
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    else:
        (tmp_path / "kc").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc"))
    applied = []
    from kubernetes import client

    for name in ("create_namespace", "create_namespaced_secret", "replace_namespaced_secret"):
        monkeypatch.setattr(client.CoreV1Api, name, lambda *a, _n=name, **k: applied.append(_n))
    result = CliRunner().invoke(app, ["deploy", "--out", "rendered"])
    assert result.exit_code == 1
    assert ("no usable kubeconfig" if kubeconfig == "missing" else "unreachable") in result.output
    assert "nothing was applied" in result.output and "Fix:" in result.output
    assert "Traceback" not in result.output
    assert applied == [] and helm_calls == []
