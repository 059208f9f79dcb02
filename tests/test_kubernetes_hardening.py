"""The Kubernetes target's pods, hardened (issue 22): the whole official chart rendered with our values.

* Every pod the release makes (the chart's Deployments, StatefulSets, Jobs, the KubernetesExecutor's worker
  pod template, the serving Deployment) meets Pod Security's "restricted" profile, checked here by its
  rules as the Kubernetes docs state them (not by comparing with the code's constants), and the namespace
  enforces that profile - so the API server itself refuses a pod that does not (tests/test_chart_real_node.py
  runs the seed's pipeline in it).
* Worker pods get neither the metadata database URL nor the Fernet/API/JWT keys; the scheduler still does.
"""

from __future__ import annotations

import yaml
from k8s_specs import CHART_TGZ, shared_file, spec_in

from airflow_gitops.kubernetes.render import render

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# The variables that hold the database URL and the keys, as the chart names them (files/pod-template-file,
# templates/_helpers.yaml standard_airflow_environment).
DB_AND_KEYS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW_CONN_AIRFLOW_DB",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY",
}


def _restricted_violations(pod_spec: dict, where: str) -> list[str]:
    """Pod Security Standards, "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    out = []
    psc = pod_spec.get("securityContext") or {}
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        out.append(f"{where}: host namespaces")
    if psc.get("runAsUser") == 0:
        out.append(f"{where}: pod runAsUser 0")
    for v in pod_spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"{where}: volume {v['name']} is {kinds}")
    for c in (pod_spec.get("initContainers") or []) + pod_spec["containers"]:
        sc, name = c.get("securityContext") or {}, f"{where}/{c['name']}"
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities {caps}")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
    return out


def _rendered(tmp_path, delivery: str, **kw):
    spec = spec_in(
        tmp_path,
        kubernetes={"chart": str(shared_file(CHART_TGZ))},
        airflow={"executor": "KubernetesExecutor"},
        dags={"delivery": delivery},
        **kw,
    )
    out = tmp_path / delivery
    render(spec, out)
    docs = [d for d in yaml.safe_load_all((out / "chart.yaml").read_text()) if d]
    docs += (
        [d for d in yaml.safe_load_all((out / "serving.yaml").read_text()) if d]
        if (out / "serving.yaml").exists()
        else []
    )
    namespace = next(d for d in yaml.safe_load_all((out / "manifests.yaml").read_text()) if d["kind"] == "Namespace")
    (template,) = [
        yaml.safe_load(d["data"]["pod_template_file.yaml"])
        for d in docs
        if d["kind"] == "ConfigMap" and "pod_template_file.yaml" in (d.get("data") or {})
    ]
    workloads = {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    }
    return namespace, template, workloads


def _env(pod_spec: dict) -> set[str]:
    return {
        e["name"] for c in (pod_spec.get("initContainers") or []) + pod_spec["containers"] for e in c.get("env") or []
    }


def test_every_pod_of_the_release_is_restricted_and_the_namespace_enforces_it(tmp_path):
    for delivery in ("git-sync", "bundle"):
        namespace, template, workloads = _rendered(tmp_path, delivery)
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert {"Deployment/airflow-scheduler", "Deployment/airflow-api-server", "Deployment/airflow-statsd"} <= set(
            workloads
        ), sorted(workloads)
        assert any(k.startswith("Job/") for k in workloads) and any("serving" in k for k in workloads), sorted(
            workloads
        )
        problems = _restricted_violations(template["spec"], f"{delivery}: worker pod template")
        for name, pod_spec in workloads.items():
            problems += _restricted_violations(pod_spec, f"{delivery}: {name}")
        assert problems == [], "\n".join(problems)


def test_worker_pods_get_no_database_url_and_no_keys_the_scheduler_still_does(tmp_path):
    for delivery in ("git-sync", "bundle"):
        _, template, workloads = _rendered(tmp_path, delivery)
        worker = _env(template["spec"])
        assert worker & DB_AND_KEYS == set(), worker & DB_AND_KEYS
        # what DAG code needs is still there
        assert {"MLFLOW_TRACKING_URI", "MLOPS_DATA_BUCKET", "AWS_PROFILE", "AIRFLOW__CORE__EXECUTOR"} <= worker, worker
        if delivery == "bundle":  # the worker clones the DAG bundle itself: it keeps the git Connection
            assert "AIRFLOW_CONN_AIRFLOW_GITOPS_DAGS" in worker, worker
        else:  # git-sync clones it for the worker, in an init container
            assert [c["name"] for c in template["spec"]["initContainers"]] == ["git-sync-init"]
        assert DB_AND_KEYS <= _env(workloads["Deployment/airflow-scheduler"])
        assert {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY"} <= _env(
            workloads["Deployment/airflow-api-server"]
        )
        # the template is still the chart's: its volumes and mounts (logs, AWS files, config) are all there
        volumes = {v["name"] for v in template["spec"]["volumes"]}
        assert {"logs", "config", "aws-credentials"} <= volumes, volumes
