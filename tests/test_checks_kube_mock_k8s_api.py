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


def _node(name, labels=None, taints=None, unschedulable=False):
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
    }


def _rwo_store(spec, nodes=None):
    store = _healthy_store(spec)
    store[f"/api/v1/namespaces/{NS}/persistentvolumeclaims/airflow-logs"]["spec"]["accessModes"] = ["ReadWriteOnce"]
    if nodes is not None:
        store["/api/v1/nodes"] = {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": nodes}
    return store


NO_SCHEDULE = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]


def test_rwo_logs_pvc_fails_on_several_nodes_mock_k8s_api(tmp_path, mock_k8s_api):
    """KubernetesExecutor (the default), logs.remote off: an RWO claim where task pods can land on two
    nodes fails, naming both ways out (remote logging to the bucket, an RWX storage class)."""
    spec = _spec(tmp_path)
    nodes = [_node("a"), _node("b"), _node("cordoned", unschedulable=True), _node("gpu", taints=NO_SCHEDULE)]
    mock_k8s_api.store = _rwo_store(spec, nodes)
    r = _rows(kube.kube_checks(spec))["kube.logs_pvc"]
    assert r.status == "fail" and "ReadWriteOnce" in r.saw and "2 nodes" in r.saw, r
    assert "task" in r.saw and "ReadWriteMany" in r.fix
    assert "logs.remote: s3 and logs.persistence: false" in r.fix and "s3://mlops-data/airflow-logs/" in r.fix


def test_rwo_logs_pvc_on_one_node_or_unknown_nodes_warns_mock_k8s_api(tmp_path, mock_k8s_api):
    """It works while the pods have one node to go to (the tainted, cordoned and unselected ones do not
    count), and where the nodes cannot be listed the row cannot say more than a warning."""
    spec = parse_spec({"kubernetes": {"node_selector": {"pool": "airflow"}}}, base_dir=tmp_path)
    nodes = [
        _node("only", labels={"pool": "airflow"}),
        _node("other-pool", labels={"pool": "web"}),
        _node("tainted", labels={"pool": "airflow"}, taints=NO_SCHEDULE),
    ]
    mock_k8s_api.store = _rwo_store(spec, nodes)
    r = _rows(kube.kube_checks(spec))["kube.logs_pvc"]
    assert r.status == "warn" and "one node" in r.saw and "(only)" in r.saw, r
    assert "logs.remote: s3" in r.fix
    # A toleration for the taint makes that node count too: two nodes, a failure.
    tolerant = parse_spec(
        {
            "kubernetes": {
                "node_selector": {"pool": "airflow"},
                "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            }
        },
        base_dir=tmp_path,
    )
    assert _rows(kube.kube_checks(tolerant))["kube.logs_pvc"].status == "fail"
    mock_k8s_api.store = _rwo_store(spec)  # no node list (the mock answers 404, as RBAC's 403 would stop it)
    r = _rows(kube.kube_checks(spec))["kube.logs_pvc"]
    assert r.status == "warn" and "could not be listed" in r.saw, r


def test_rwo_logs_pvc_with_remote_logging_names_persistence_off_mock_k8s_api(tmp_path, mock_k8s_api):
    """With logs.remote: s3 the task pods still mount the claim while logs.persistence is on: the fix is
    to turn the volume off, the logs being in the bucket already."""
    spec = parse_spec({"logs": {"remote": "s3", "remote_prefix": "prod/logs"}}, base_dir=tmp_path)
    mock_k8s_api.store = _rwo_store(spec, [_node("a"), _node("b")])
    r = _rows(kube.kube_checks(spec))["kube.logs_pvc"]
    assert r.status == "fail" and "set logs.persistence: false" in r.fix and "s3://mlops-data/prod/logs/" in r.fix
    assert "logs.remote: s3 and" not in r.fix
    off = parse_spec({"logs": {"remote": "s3", "persistence": False}}, base_dir=tmp_path)
    mock_k8s_api.store = _healthy_store(off)
    r = _rows(kube.kube_checks(off))["kube.logs_pvc"]
    assert r.status == "skip" and "s3://mlops-data/airflow-logs/" in r.saw, r


def test_missing_namespace_fails_mock_k8s_api(tmp_path, mock_k8s_api):
    r = _rows(kube.kube_checks(_spec(tmp_path)))["kube.namespace"]
    assert r.status == "fail" and "kubectl create namespace airflow" in r.fix


def _storage_class(name, provisioner, default=False):
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
        "provisioner": provisioner,
    }


def test_logs_pvc_to_create_on_a_single_node_storage_class_warns_mock_k8s_api(tmp_path, mock_k8s_api):
    """Before the first deploy (no claim yet): the RWX PVC deploy would create on an EBS-style class would
    stay Pending - the default class, or logs.storage_class - while an RWX-capable one is fine."""
    spec = _spec(tmp_path)
    store = _healthy_store(spec)
    del store[f"/api/v1/namespaces/{NS}/persistentvolumeclaims/airflow-logs"]
    classes = [_storage_class("gp3", "ebs.csi.aws.com", default=True), _storage_class("efs", "efs.csi.aws.com")]
    store["/apis/storage.k8s.io/v1/storageclasses"] = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClassList",
        "metadata": {},
        "items": classes,
    }
    for c in classes:
        store[f"/apis/storage.k8s.io/v1/storageclasses/{c['metadata']['name']}"] = c
    mock_k8s_api.store = store
    rows = _rows(kube.kube_checks(spec))
    assert rows["kube.logs_pvc"].status == "fail" and "does not exist" in rows["kube.logs_pvc"].saw
    r = rows["kube.logs_storage_class"]
    assert r.status == "warn" and "gp3" in r.saw and "ebs.csi.aws.com" in r.saw and "Pending" in r.saw, r
    assert "logs.storage_class" in r.fix and "logs.remote: s3" in r.fix
    efs = parse_spec({"logs": {"storage_class": "efs"}}, base_dir=tmp_path)
    assert _rows(kube.kube_checks(efs))["kube.logs_storage_class"].status == "ok"
    typo = parse_spec({"logs": {"storage_class": "nfs"}}, base_dir=tmp_path)
    r = _rows(kube.kube_checks(typo))["kube.logs_storage_class"]
    assert r.status == "fail" and "'nfs'" in r.saw, r
