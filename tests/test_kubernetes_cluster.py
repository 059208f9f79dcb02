"""The Kubernetes target against a REAL control plane (tests/kube_cluster.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler built from k8s.io/kubernetes, kwok for the nodes, the real helm).

What kwok cannot do: run containers. Pods of Deployments/StatefulSets become Running+Ready and Job pods
Succeeded without running the image, so these tests prove what the API server, the controllers, the
scheduler, RBAC and helm do with our objects, not what Airflow does inside the pods.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid

import pytest
import yaml
from cryptography.fernet import Fernet
from k8s_specs import CHART_TGZ, platform, shared_file
from typer.testing import CliRunner

from airflow_gitops.cli import app

pytestmark = pytest.mark.kubernetes

runner = CliRunner()


@pytest.fixture
def cluster_env(kube_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("PATH", f"{kube_cluster.bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kube_cluster


def kubectl(cluster, *args: str, check: bool = True) -> str:
    proc = subprocess.run([str(cluster.kubectl), *args], capture_output=True, text=True, env=cluster.env(), timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def delete_logs_claim(cluster, ns: str) -> None:
    """Delete the logs PVC now (kwok runs no pod to release it: its protection finalizer is removed)."""
    kubectl(cluster, "-n", ns, "delete", "pvc", "airflow-logs", "--wait=false")
    finalizers = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    kubectl(cluster, "-n", ns, "patch", "pvc", "airflow-logs", "--type=json", "-p", finalizers, check=False)


def release(cluster, namespace: str) -> dict:
    """The release as `helm list` reports it."""
    out = subprocess.run(
        [str(cluster.helm), "-n", namespace, "list", "-o", "json"], capture_output=True, text=True, env=cluster.env()
    )
    assert out.returncode == 0, out.stderr
    (rel,) = json.loads(out.stdout)
    return rel


def write_spec(tmp, namespace: str, **over) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "deploy_key")], check=True)
    data = platform(tmp, **over)
    data["kubernetes"] = {"namespace": namespace, "release": "airflow", "chart": str(shared_file(CHART_TGZ))}
    (tmp / "platform.yaml").write_text(yaml.safe_dump(data))
    return str(tmp / "platform.yaml")


def rwx_volume(cluster, namespace: str, claim: str = "airflow-logs") -> None:
    """What an RWX storage class would provide: a PersistentVolume the logs claim binds to (never mounted:
    kwok runs no containers)."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-logs-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "nfs": {"server": "127.0.0.1", "path": f"/{namespace}"},
        },
    }
    subprocess.run(
        [str(cluster.kubectl), "apply", "-f", "-"], input=json.dumps(pv), text=True, env=cluster.env(), check=True
    )


def deploy(spec_file: str, out, *extra: str):
    return runner.invoke(app, ["deploy", "-f", spec_file, "--out", str(out), *extra])


@pytest.mark.parametrize("delivery", ["git-sync", "bundle"])
def test_deploy_installs_the_official_chart_ready_and_idempotent(cluster_env, tmp_path, delivery):
    ns = f"af-{delivery}"
    spec_file = write_spec(tmp_path, ns, dags={"delivery": delivery})
    rwx_volume(cluster_env, ns)
    first = deploy(spec_file, tmp_path / "out")
    assert first.exit_code == 0, first.output
    assert "Secret/airflow-fernet-key: created" in first.output and "applied" in first.output
    # helm --wait --wait-for-jobs returned: every workload has its pods ready, the Jobs finished.
    for kind in ("deployments", "statefulsets"):
        items = json.loads(kubectl(cluster_env, "-n", ns, "get", kind, "-o", "json"))["items"]
        for w in items:
            assert (w["status"].get("readyReplicas") or 0) == w["spec"]["replicas"], w["metadata"]["name"]
    names = {
        w["metadata"]["name"]
        for w in json.loads(kubectl(cluster_env, "-n", ns, "get", "deployments", "-o", "json"))["items"]
    }
    assert {"airflow-scheduler", "airflow-api-server", "airflow-dag-processor"} <= names
    # Secrets are applied server-side, managed by airflow-gitops; the values are ours.
    fernet = json.loads(
        kubectl(cluster_env, "-n", ns, "get", "secret", "airflow-fernet-key", "-o", "json", "--show-managed-fields")
    )
    assert any(
        m["manager"] == "airflow-gitops" and m["operation"] == "Apply" for m in fernet["metadata"]["managedFields"]
    )
    local_key = (tmp_path / ".airflow-gitops" / "secrets" / "fernet.key").read_text().strip()
    assert base64.b64decode(fernet["data"]["fernet-key"]).decode() == local_key
    assert "Bound" in kubectl(cluster_env, "-n", ns, "get", "pvc", "airflow-logs", "-o", "jsonpath={.status.phase}")
    # Nothing secret in what deploy printed (names and key names only).
    from airflow_gitops.keystore import all_secret_values
    from airflow_gitops.spec import load_spec

    assert not [v for v in all_secret_values(load_spec(spec_file)) if v in first.output]

    second = deploy(spec_file, tmp_path / "out")
    assert second.exit_code == 0, second.output
    assert (
        second.output.count(": unchanged") == 7 + 3  # + the serving Deployment, Service, PDB
        and ": created" not in second.output
        and ": updated" not in second.output
    )
    revision = release(cluster_env, ns)["revision"]

    # A changed platform.yaml upgrades the release in place.
    data = yaml.safe_load(open(spec_file))
    data["mlflow"]["tracking_uri"] = "http://mlflow.other.svc:5000"
    open(spec_file, "w").write(yaml.safe_dump(data))
    third = deploy(spec_file, tmp_path / "out")
    assert third.exit_code == 0, third.output
    upgraded = release(cluster_env, ns)
    assert int(upgraded["revision"]) == int(revision) + 1 and upgraded["status"] == "deployed"
    sched = json.loads(kubectl(cluster_env, "-n", ns, "get", "deployment", "airflow-scheduler", "-o", "json"))
    env = {e["name"]: e.get("value") for e in sched["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.other.svc:5000"

    # verify and doctor against the live cluster: everything right.
    result = runner.invoke(app, ["verify", "--target", "kubernetes", "-f", spec_file, "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, [c for c in report["checks"] if c["status"] == "fail"]
    assert {"verify.workload.airflow-scheduler", "kube.logs_pvc"} <= {c["name"] for c in report["checks"]}
    # kwok runs no container: the rows read from containers say so (the real node's test reads them)
    (simulated,) = [c for c in report["checks"] if c["name"] == "verify.container"]
    assert simulated["status"] == "skip" and "kwok" in simulated["saw"]


def test_the_scheduler_may_run_task_pods_in_its_namespace_and_nothing_cluster_wide(cluster_env, tmp_path):
    ns = "af-rbac"
    spec_file = write_spec(tmp_path, ns)
    rwx_volume(cluster_env, ns)
    assert deploy(spec_file, tmp_path / "out").exit_code == 0
    sa = f"system:serviceaccount:{ns}:airflow-scheduler"

    def can(verb: str, resource: str, namespace: str | None = ns) -> bool:
        args = ["auth", "can-i", verb, resource, "--as", sa] + (["-n", namespace] if namespace else [])
        return kubectl(cluster_env, *args, check=False).strip() == "yes"  # a SubjectAccessReview

    for verb in ("create", "watch", "delete", "get", "list", "patch"):
        assert can(verb, "pods"), f"the KubernetesExecutor needs to {verb} pods"
    assert can("get", "pods/log")
    assert not can("create", "pods", "default"), "task pods only in the release's namespace"
    assert not can("list", "secrets", None) and not can("list", "nodes", None)
    assert not can("create", "clusterrolebindings", None)


def test_doctor_and_verify_name_a_missing_key_a_missing_pvc_and_a_hand_edited_secret(cluster_env, tmp_path):
    ns = "af-doctor"
    spec_file = write_spec(tmp_path, ns)
    rwx_volume(cluster_env, ns)
    assert deploy(spec_file, tmp_path / "out").exit_code == 0

    def rows(verb: str) -> dict:
        result = runner.invoke(app, [verb, "--target", "kubernetes", "-f", spec_file, "--json"])
        return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)["checks"]}

    code, ok_rows = rows("doctor")
    assert ok_rows["kube.secret.airflow-fernet-key"]["status"] == "ok", ok_rows
    # A Secret edited by hand: a new Fernet key would make every stored value unreadable.
    other = base64.b64encode(Fernet.generate_key()).decode()
    kubectl(
        cluster_env,
        "-n",
        ns,
        "patch",
        "secret",
        "airflow-fernet-key",
        "-p",
        json.dumps({"data": {"fernet-key": other}}),
    )
    # A key removed, and the logs PVC deleted.
    kubectl(
        cluster_env,
        "-n",
        ns,
        "patch",
        "secret",
        "airflow-jwt-secret",
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/data/jwt-secret"}]),
    )
    delete_logs_claim(cluster_env, ns)
    for verb in ("doctor", "verify"):
        code, r = rows(verb)
        assert code == 1
        edited = r["kube.secret.airflow-fernet-key"]
        assert edited["status"] == "fail" and "differs" in edited["saw"] and "deploy" in edited["fix"]
        assert other not in json.dumps(r)
        missing = r["kube.secret.airflow-jwt-secret"]
        assert missing["status"] == "fail" and "lacks key jwt-secret" in missing["saw"]
        assert r["kube.logs_pvc"]["status"] == "fail" and "does not exist" in r["kube.logs_pvc"]["saw"]
    # deploy writes the edited Secret back (server-side apply) and recreates what is missing.
    rwx_volume(cluster_env, ns)
    again = deploy(spec_file, tmp_path / "out")
    assert again.exit_code == 0, again.output
    assert "Secret/airflow-fernet-key: updated" in again.output and "Secret/airflow-jwt-secret: updated" in again.output
    code, r = rows("doctor")
    assert r["kube.secret.airflow-fernet-key"]["status"] == "ok" and r["kube.logs_pvc"]["status"] == "ok", r


def test_fernet_rotation_on_kubernetes_end_to_end(cluster_env, tmp_path, airflow_db):
    """The two-step rotation against the cluster. The re-encryption itself (`kubectl exec ... airflow
    rotate-fernet-key` in the scheduler pod) cannot run under kwok (no containers): the test runs the
    same Airflow command here with the key list the pod would get from the Secret (a stand-in, named so)."""
    ns = "af-rotate"
    spec_file = write_spec(tmp_path, ns, database={"url": airflow_db.url})
    rwx_volume(cluster_env, ns)
    secrets_dir = tmp_path / ".airflow-gitops" / "secrets"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "fernet.key").write_text(airflow_db.fernet_key + "\n")
    (secrets_dir / "fernet.key").chmod(0o600)
    assert deploy(spec_file, tmp_path / "out").exit_code == 0

    def cluster_keys() -> list[str]:
        raw = kubectl(cluster_env, "-n", ns, "get", "secret", "airflow-fernet-key", "-o", "jsonpath={.data.fernet-key}")
        return base64.b64decode(raw).decode().strip().split(",")

    step1 = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", spec_file])
    assert step1.exit_code == 0, step1.output
    keys = cluster_keys()
    assert len(keys) == 2 and keys[1] == airflow_db.fernet_key, "NEW,OLD in the cluster"
    assert "Deployment/airflow-scheduler" in step1.output  # restarted to read both keys
    early = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", spec_file])
    assert early.exit_code == 1 and "not re-encrypted with the new key yet" in early.output
    # Stand-in for `kubectl exec deploy/airflow-scheduler -- airflow rotate-fernet-key` (no containers in kwok).
    env = {**airflow_db.env, "AIRFLOW__CORE__FERNET_KEY": ",".join(keys)}
    airflow = os.path.join(os.path.dirname(os.sys.executable), "airflow")
    subprocess.run([airflow, "rotate-fernet-key"], env=env, check=True, capture_output=True, timeout=600)
    step2 = runner.invoke(app, ["rotate-fernet-key", "--target", "kubernetes", "-f", spec_file])
    assert step2.exit_code == 0, step2.output
    assert cluster_keys() == [keys[0]], "only the new key is left in the cluster"
    assert (secrets_dir / "fernet.key").read_text().strip() == keys[0]


def test_deploy_without_permissions_applies_nothing(cluster_env, tmp_path):
    """A user who may only read namespaces: one message naming what is missing; nothing written."""
    ns = "af-norbac"
    kubectl(cluster_env, "create", "namespace", "limited")
    kubectl(cluster_env, "-n", "limited", "create", "serviceaccount", "deployer")
    kubectl(cluster_env, "create", "clusterrole", "ns-reader", "--verb=get,list", "--resource=namespaces")
    kubectl(
        cluster_env,
        "create",
        "clusterrolebinding",
        "deployer-ns-reader",
        "--clusterrole=ns-reader",
        "--serviceaccount=limited:deployer",
    )
    token = kubectl(cluster_env, "-n", "limited", "create", "token", "deployer").strip()
    admin = yaml.safe_load(cluster_env.kubeconfig.read_text())
    limited = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [{"name": "deployer", "context": {"cluster": admin["clusters"][0]["name"], "user": "deployer"}}],
        "current-context": "deployer",
    }
    (tmp_path / "limited.kubeconfig").write_text(yaml.safe_dump(limited))
    spec_file = write_spec(tmp_path, ns)
    os.environ["KUBECONFIG"] = str(tmp_path / "limited.kubeconfig")  # monkeypatch already restores it
    try:
        result = deploy(spec_file, tmp_path / "out")
    finally:
        os.environ["KUBECONFIG"] = str(cluster_env.kubeconfig)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "may not" in result.output and "create secrets" in result.output and "nothing was applied" in result.output
    assert kubectl(cluster_env, "get", "namespace", ns, check=False) == ""  # not created


def test_deploy_with_a_wrong_context_is_one_clear_message(cluster_env, tmp_path):
    spec_file = write_spec(tmp_path, "af-ctx")
    data = yaml.safe_load(open(spec_file))
    data["kubernetes"]["context"] = "no-such-context"
    open(spec_file, "w").write(yaml.safe_dump(data))
    result = deploy(spec_file, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no-such-context" in result.output and "nothing was applied" in result.output
    assert kubectl(cluster_env, "get", "namespace", "af-ctx", check=False) == ""


def test_doctor_logs_rows_on_a_real_cluster(cluster_env, tmp_path):
    """kube.logs_pvc / kube.logs_storage_class against the real API server: an RWO logs claim (bound by
    the host-path provisioner) where pods can land on the two kwok nodes is a failure naming logs.remote;
    before a deploy, an RWX claim on a class with an EBS provisioner would stay Pending: a warning."""
    from airflow_gitops.checks.kube import kube_checks
    from airflow_gitops.spec import parse_spec

    ns = f"af-logs-{uuid.uuid4().hex[:4]}"
    kubectl(cluster_env, "create", "namespace", ns)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "airflow-logs", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    subprocess.run(
        [str(cluster_env.kubectl), "apply", "-f", "-"],
        input=json.dumps(pvc),
        text=True,
        env=cluster_env.env(),
        check=True,
    )
    spec = parse_spec(platform(tmp_path, kubernetes={"namespace": ns}), base_dir=tmp_path)
    nodes = json.loads(kubectl(cluster_env, "get", "nodes", "-o", "json"))["items"]
    untainted = [n["metadata"]["name"] for n in nodes if not (n["spec"].get("taints") or [])]
    assert len(untainted) >= 2, untainted  # the kwok nodes (a real node is tainted: not counted)
    r = {c.name: c for c in kube_checks(spec)}["kube.logs_pvc"]
    assert r.status == "fail" and "ReadWriteOnce" in r.saw and f"{len(untainted)} nodes" in r.saw, r
    assert "logs.remote: s3 and logs.persistence: false" in r.fix
    delete_logs_claim(cluster_env, ns)
    sc_name = f"ebs-{uuid.uuid4().hex[:4]}"
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": sc_name},
        "provisioner": "ebs.csi.aws.com",
    }
    subprocess.run(
        [str(cluster_env.kubectl), "apply", "-f", "-"],
        input=json.dumps(sc),
        text=True,
        env=cluster_env.env(),
        check=True,
    )
    try:
        ebs = parse_spec(
            platform(tmp_path, kubernetes={"namespace": ns}, logs={"storage_class": sc_name}), base_dir=tmp_path
        )
        rows = {c.name: c for c in kube_checks(ebs)}
        assert rows["kube.logs_pvc"].status == "fail" and "does not exist" in rows["kube.logs_pvc"].saw
        r = rows["kube.logs_storage_class"]
        assert r.status == "warn" and "ebs.csi.aws.com" in r.saw and "Pending" in r.saw, r
        # The cluster's default class (host-path) is not a single-node provisioner the check knows.
        default = {c.name: c for c in kube_checks(spec)}["kube.logs_storage_class"]
        assert default.status == "ok" and "standard" in default.saw, default
    finally:
        kubectl(cluster_env, "delete", "storageclass", sc_name, check=False)
        kubectl(cluster_env, "delete", "namespace", ns, "--wait=false", check=False)
