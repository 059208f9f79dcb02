"""Kubernetes doctor rows against a mocked K8s API (an HTTP server speaking the core/v1 JSON) and with
no kubeconfig at all."""

from __future__ import annotations

import base64

from airflow_gitops import contract
from airflow_gitops.checks import kube
from airflow_gitops.spec import parse_spec

NS = "airflow"


def _secret(name, keys):
    data = {k: base64.b64encode(b"value-" + k.encode()).decode() for k in keys}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}


def _healthy_store(spec) -> dict[str, dict]:
    store = {f"/api/v1/namespaces/{NS}": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}}
    for name, keys in contract.secret_keys(spec).items():
        store[f"/api/v1/namespaces/{NS}/secrets/{name}"] = _secret(name, keys)
    store[f"/api/v1/namespaces/{NS}/persistentvolumeclaims/airflow-logs"] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "airflow-logs", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"]},
        "status": {"phase": "Bound"},
    }
    return store


def _spec(tmp_path):
    return parse_spec({}, base_dir=tmp_path)


def _rows(rows):
    return {r.name: r for r in rows}


def test_no_kubeconfig_is_not_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    (r,) = kube.kube_checks(_spec(tmp_path))
    assert r.status == "skip" and "not checked: no kubeconfig" in r.saw


def test_healthy_namespace_secrets_and_rwx_pvc_mock_k8s_api(tmp_path, mock_k8s_api):
    spec = _spec(tmp_path)
    mock_k8s_api.store = _healthy_store(spec)
    rows = kube.kube_checks(spec)
    assert all(r.status == "ok" for r in rows), rows
    assert "value-" not in repr(rows)


def test_secret_missing_key_fails_mock_k8s_api(tmp_path, mock_k8s_api):
    spec = _spec(tmp_path)
    store = _healthy_store(spec)
    store[f"/api/v1/namespaces/{NS}/secrets/airflow-fernet-key"] = _secret("airflow-fernet-key", ["fernet_key"])
    mock_k8s_api.store = store
    r = _rows(kube.kube_checks(spec))["kube.secret.airflow-fernet-key"]
    assert r.status == "fail" and "lacks key fernet-key" in r.saw and "airflow-gitops deploy" in r.fix


def test_rwo_logs_pvc_fails_mock_k8s_api(tmp_path, mock_k8s_api):
    spec = _spec(tmp_path)
    store = _healthy_store(spec)
    store[f"/api/v1/namespaces/{NS}/persistentvolumeclaims/airflow-logs"]["spec"]["accessModes"] = ["ReadWriteOnce"]
    mock_k8s_api.store = store
    r = _rows(kube.kube_checks(spec))["kube.logs_pvc"]
    assert r.status == "fail" and "ReadWriteOnce" in r.saw and "ReadWriteMany" in r.fix


def test_missing_namespace_fails_mock_k8s_api(tmp_path, mock_k8s_api):
    r = _rows(kube.kube_checks(_spec(tmp_path)))["kube.namespace"]
    assert r.status == "fail" and "kubectl create namespace airflow" in r.fix
