"""`airflow-gitops deploy`: a clear error and nothing applied without a cluster, and idempotent Secret
application against a mocked Kubernetes API (a small in-process HTTP server speaking the few
endpoints the kubernetes client uses; no real API server exists here). helm itself is stubbed."""

from __future__ import annotations

import base64
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


def test_kubernetes_deploy_mock_k8s_api_is_idempotent_and_never_prints_secrets(
    tmp_path, monkeypatch, mock_k8s_api, helm_calls
):
    write_platform(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    dry = runner.invoke(app, ["deploy", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert mock_k8s_api.writes == []  # dry run: nothing written
    assert dry.output.count("would create") == 9  # namespace, PVC, 7 Secrets (one: the admin password)
    assert "helm: would install" in dry.output

    first = runner.invoke(app, ["deploy"])
    assert first.exit_code == 0, first.output
    created = sorted(w for w in mock_k8s_api.writes if w.startswith("create"))
    assert len([w for w in created if "/secrets/" in w]) == 7  # 6 + the admin password Secret
    assert any(w.endswith("/namespaces/airflow") for w in created)
    assert any("/persistentvolumeclaims/airflow-logs" in w for w in created)
    assert helm_calls[-1]["dry_run"] is False

    mock_k8s_api.writes.clear()
    second = runner.invoke(app, ["deploy"])
    assert second.exit_code == 0, second.output
    assert mock_k8s_api.writes == []  # same keys reused: nothing to change
    assert second.output.count(": unchanged") == 7

    # A Secret changed behind our back is replaced, not duplicated.
    path = next(p for p in mock_k8s_api.store if p.endswith("/secrets/airflow-jwt-secret"))
    mock_k8s_api.store[path]["data"] = {"jwt-secret": base64.b64encode(b"tampered").decode()}
    third = runner.invoke(app, ["deploy"])
    assert mock_k8s_api.writes == [f"replace {path}"], third.output

    output = dry.output + first.output + second.output + third.output
    leaks = [s for s in _secret_lines(tmp_path) if s in output]
    assert not leaks
    assert PASSWORD not in output
