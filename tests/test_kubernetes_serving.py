"""The serving component on Kubernetes (kubernetes/serving.py): what `render` writes into serving.yaml
(the chart pods' image, MLflow URI, AWS mount and placement; probes; replicas; PDB), and against a real
API server (kwok nodes) that `deploy`'s apply creates the objects, waits for Running pods and removes
them when serving is turned off."""

from __future__ import annotations

import pytest
import yaml
from k8s_specs import spec_in
from test_kubernetes_render import validate_k8s

from airflow_gitops.kubernetes.render import render


def _docs(out):
    return {d["kind"]: d for d in yaml.safe_load_all((out / "serving.yaml").read_text())}


def test_serving_yaml_uses_the_chart_pods_image_env_aws_mount_and_placement(tmp_path):
    spec = spec_in(
        tmp_path,
        image={"repository": "registry.example.com/mlops", "tag": "v7"},
        serving={"model": "churn", "alias": "prod", "poll_interval": 3, "ingress_host": "model.example.com"},
        kubernetes={"node_selector": {"pool": "ml"}, "tolerations": [{"key": "ml", "operator": "Exists"}]},
    )
    r = render(spec, tmp_path / "out")
    validate_k8s(tmp_path / "out" / "serving.yaml")
    docs = _docs(tmp_path / "out")
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "Ingress"}
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.com/mlops:v7" == f"{r.values['images']['airflow']['repository']}:v7"
    assert c["args"] == ["python", "-m", "airflow_gitops.serving", "0.0.0.0", "8000"]
    env = {e["name"]: e["value"] for e in c["env"]}
    chart_env = {e["name"]: e["value"] for e in r.values["env"]}
    assert env["MLFLOW_TRACKING_URI"] == chart_env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example.com" and env["AWS_DEFAULT_REGION"] == "ap-northeast-2"
    assert env["MLOPS_REGISTERED_MODEL"] == "churn" and env["AIRFLOW_GITOPS_SERVING_ALIAS"] == "prod"
    assert env["AIRFLOW_GITOPS_SERVING_POLL_INTERVAL"] == "3"
    assert not [k for k in env if "WEBHOOK" in k]  # polling only on Kubernetes
    assert {"name": "aws-credentials", "mountPath": "/home/airflow/.aws", "readOnly": True} in c["volumeMounts"]
    assert {"name": "aws-credentials", "secret": {"secretName": "aws-credentials", "defaultMode": 0o440}} in pod[
        "volumes"
    ]
    assert pod["volumes"][0] == r.values["volumes"][0]
    assert pod["nodeSelector"] == r.values["nodeSelector"] == {"pool": "ml"}
    assert pod["tolerations"] == r.values["tolerations"] == [{"key": "ml", "operator": "Exists"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/metrics"  # answers with or without a model
    assert pod["securityContext"]["runAsUser"] == 50000 and pod["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1 and pdb["selector"] == dep["spec"]["selector"]
    assert "release" not in dep["spec"]["template"]["metadata"]["labels"]  # the chart's readiness wait skips it
    assert docs["Ingress"]["spec"]["rules"][0]["host"] == "model.example.com"
    assert docs["Service"]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # The image carries the serving package and its libraries.
    assert "COPY airflow_gitops /opt/airflow-gitops/airflow_gitops" in (tmp_path / "out/image/Dockerfile").read_text()
    assert (tmp_path / "out/image/airflow_gitops/serving/app.py").is_file()
    reqs = (tmp_path / "out/image/requirements.txt").read_text()
    assert "fastapi==" in reqs and "uvicorn==" in reqs and "prometheus-client==" in reqs


def test_serving_disabled_renders_nothing_and_one_replica_has_no_pdb(tmp_path):
    render(spec_in(tmp_path), tmp_path / "out")
    assert (tmp_path / "out" / "serving.yaml").exists()
    render(spec_in(tmp_path, serving={"enabled": False}), tmp_path / "out")
    assert not (tmp_path / "out" / "serving.yaml").exists()
    assert not (tmp_path / "out" / "image" / "airflow_gitops").exists()
    assert "airflow_gitops" not in (tmp_path / "out/image/Dockerfile").read_text()
    render(spec_in(tmp_path, serving={"replicas": 1}), tmp_path / "out2")
    assert set(_docs(tmp_path / "out2")) == {"Deployment", "Service"}


@pytest.mark.kubernetes
def test_serving_apply_waits_for_running_and_disabling_deletes(kube_cluster, tmp_path, monkeypatch):
    from kubernetes import client

    from airflow_gitops.kubernetes import deploy
    from airflow_gitops.kubernetes.cluster import connect
    from airflow_gitops.kubernetes.manifests import namespace_and_pvc
    from airflow_gitops.kubernetes.serving import manifests

    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    spec = spec_in(tmp_path, kubernetes={"namespace": "serving-kwok"})
    api = connect(spec)
    client.CoreV1Api(api).create_namespace(namespace_and_pvc(spec)[0])
    docs = manifests(spec)
    lines = deploy.apply_serving(api, spec, docs, dry_run=False)
    assert lines == [
        "Deployment/airflow-serving: created",
        "Service/airflow-serving: created",
        "PodDisruptionBudget/airflow-serving: created",
    ]
    assert "2/2 pods running" in deploy.wait_serving_running(api, spec, timeout=120)
    dep = client.AppsV1Api(api).read_namespaced_deployment("airflow-serving", "serving-kwok")
    c = dep.spec.template.spec.containers[0]
    assert dep.spec.replicas == 2 and c.image == "airflow-gitops/airflow-mlops:latest"
    assert c.readiness_probe.http_get.path == "/health"
    assert [m.mount_path for m in c.volume_mounts if m.name == "aws-credentials"] == ["/home/airflow/.aws"]
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("airflow-serving", "serving-kwok")
    assert pdb.spec.min_available == 1
    again = deploy.apply_serving(api, spec, docs, dry_run=False)
    assert all(line.endswith(": unchanged") for line in again), again
    off = spec_in(tmp_path, kubernetes={"namespace": "serving-kwok"}, serving={"enabled": False})
    gone = deploy.apply_serving(api, off, manifests(off), dry_run=False)
    assert sorted(gone) == sorted(
        f"{k}/airflow-serving: deleted (serving)" for k in ("Deployment", "Service", "PodDisruptionBudget")
    )
    assert client.AppsV1Api(api).list_namespaced_deployment("serving-kwok").items == []
    assert client.PolicyV1Api(api).list_namespaced_pod_disruption_budget("serving-kwok").items == []


def test_deploy_says_the_pods_poll_and_tls_without_host_is_refused(tmp_path):
    from airflow_gitops.kubernetes.deploy import serving_follow_note
    from airflow_gitops.spec import SpecError

    note = serving_follow_note(spec_in(tmp_path, serving={"poll_interval": 7}))
    assert note.startswith("serving follows @champion by polling every 7 s") and "serving.webhook" in note
    assert "serving.webhook" not in serving_follow_note(spec_in(tmp_path, serving={"webhook": False}))
    with pytest.raises(SpecError, match="serving.tls_secret is set but serving.ingress_host is not"):
        spec_in(tmp_path, serving={"tls_secret": "serving-tls"})
    out = tmp_path / "out"
    render(spec_in(tmp_path, serving={"load_in_worker": False}), out)
    env = {
        e["name"]: e.get("value") for e in _docs(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AIRFLOW_GITOPS_SERVING_LOAD_IN_WORKER"] == "0"
