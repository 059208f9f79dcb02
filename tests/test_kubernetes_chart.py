"""The whole official chart rendered (helm-python-sdk, offline) with our values.

The chart is the shared 1.21.0 package (shared/reference/.../airflow-1.21.0.tgz, read as it is), or
AIRFLOW_CHART_DIR (a chart folder) to try another one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from k8s_specs import CHART_TGZ, KNOWN_HOSTS, shared_file, spec_in

from airflow_gitops.kubernetes.render import render

# (workload name, main container) of every pod that runs DAG code or talks to AWS.
PODS = [
    ("airflow-scheduler", "scheduler"),
    ("airflow-dag-processor", "dag-processor"),
    ("airflow-triggerer", "triggerer"),
    ("airflow-api-server", "api-server"),
    ("pod_template_file", "base"),
]
GIT_SYNC_PODS = ["airflow-dag-processor", "airflow-triggerer", "pod_template_file"]


@pytest.fixture(scope="module")
def chart_dir() -> Path:
    env = os.environ.get("AIRFLOW_CHART_DIR")
    if env:
        assert (Path(env) / "Chart.yaml").is_file(), f"AIRFLOW_CHART_DIR={env} has no Chart.yaml"
        return Path(env)
    return shared_file(CHART_TGZ)


def rendered(tmp: Path, chart: Path, delivery: str):
    spec = spec_in(tmp, delivery=delivery)
    r = render(spec, tmp / "out", chart=str(chart))
    docs = [d for d in yaml.safe_load_all((tmp / "out" / "chart.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "airflow-config")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }
    pods["pod_template_file"] = yaml.safe_load(cm["data"]["pod_template_file.yaml"])["spec"]
    return r, docs, cm, pods


def containers(pod: dict) -> list[dict]:
    return (pod.get("containers") or []) + (pod.get("initContainers") or [])


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def main(pod: dict, name: str) -> dict:
    return next(c for c in pod["containers"] if c["name"] == name)


def check_common(docs, cm, pods, r):
    cfg = cm["data"]["airflow.cfg"]
    assert "executor = KubernetesExecutor" in cfg
    for workload, container in PODS:
        pod = pods[workload]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        assert vols["aws-credentials"]["secret"]["secretName"] == "aws-credentials", workload
        mounts = {m["mountPath"]: m for m in main(pod, container).get("volumeMounts", [])}
        assert mounts["/home/airflow/.aws"].get("readOnly") is True, workload
        env = env_of(main(pod, container))
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000", workload
        assert env["AWS_DEFAULT_REGION"] == "ap-northeast-2", workload
        if workload == "pod_template_file":  # worker pods: no database URL, no key (issue 22)
            assert not {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"} & set(env), env
            assert not {"AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"} & set(env), env
            continue
        assert env["AIRFLOW__CORE__FERNET_KEY"]["secretKeyRef"]["name"] == "airflow-fernet-key", workload
        for var, secret in [
            ("AIRFLOW__API__SECRET_KEY", "airflow-api-secret-key"),
            ("AIRFLOW__API_AUTH__JWT_SECRET", "airflow-jwt-secret"),
        ]:
            if var in env:
                assert env[var]["secretKeyRef"]["name"] == secret, (workload, var)
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["secretKeyRef"]["name"] == "airflow-metadata"
    sched = env_of(main(pods["airflow-scheduler"], "scheduler"))
    assert sched["AIRFLOW__API_AUTH__JWT_SECRET"]["secretKeyRef"]["name"] == "airflow-jwt-secret"
    api = env_of(main(pods["airflow-api-server"], "api-server"))
    assert api["AIRFLOW__API__SECRET_KEY"]["secretKeyRef"]["name"] == "airflow-api-secret-key"
    generated = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert not [n for n in generated if n.endswith(("fernet-key", "api-secret-key", "jwt-secret", "metadata"))], (
        generated
    )
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["airflow.example.com"]
    chart_text = "\n".join(yaml.safe_dump(d) for d in docs)
    for value in r.secrets.values():
        for line in value.splitlines():
            if len(line.strip()) > 15 and "PRIVATE KEY" not in line:
                assert line.strip() not in chart_text


def test_kubernetes_chart_git_sync(tmp_path, chart_dir):
    r, docs, cm, pods = rendered(tmp_path, chart_dir, "git-sync")
    check_common(docs, cm, pods, r)
    assert "dags_folder = /opt/airflow/dags/repo/pipelines/dags" in cm["data"]["airflow.cfg"]
    assert cm["data"]["known_hosts"].strip() == KNOWN_HOSTS.strip()
    for workload in GIT_SYNC_PODS:
        syncs = [c for c in containers(pods[workload]) if c["name"].startswith("git-sync")]
        assert syncs, f"no git-sync container in {workload}"
        for c in syncs:
            env = env_of(c)
            assert env["GITSYNC_SSH_KNOWN_HOSTS"] == "true" and env["GIT_KNOWN_HOSTS"] == "true", workload
            assert env["GITSYNC_REF"] == "release" and env["GIT_SYNC_BRANCH"] == "release", workload
            assert env["GIT_SYNC_REV"] == "HEAD" and env["GITSYNC_REPO"] == "git@github.com:org/airflow-dags.git"
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/etc/git-secret/ssh", "/etc/git-secret/known_hosts"} <= mounts
        vols = {v["name"]: v for v in pods[workload]["volumes"]}
        assert vols["git-sync-ssh-key"]["secret"]["secretName"] == "airflow-git-ssh"


def test_kubernetes_chart_bundle(tmp_path, chart_dir):
    r, docs, cm, pods = rendered(tmp_path, chart_dir, "bundle")
    check_common(docs, cm, pods, r)
    cfg = cm["data"]["airflow.cfg"]
    line = next(ln for ln in cfg.splitlines() if ln.startswith("dag_bundle_config_list"))
    (bundle,) = json.loads(line.split("=", 1)[1])
    assert bundle["classpath"] == "airflow.providers.git.bundles.git.GitDagBundle"
    assert bundle["kwargs"] == {
        "git_conn_id": "airflow_gitops_dags",
        "tracking_ref": "release",
        "refresh_interval": 10,
        "subdir": "pipelines/dags",
    }
    for workload, container in PODS:
        pod = pods[workload]
        assert not [c for c in containers(pod) if c["name"].startswith("git-sync")], workload
        env = env_of(main(pod, container))
        ref = env["AIRFLOW_CONN_AIRFLOW_GITOPS_DAGS"]["secretKeyRef"]
        assert ref == {"name": "airflow-git-ssh", "key": "connection"}, workload
        mounts = {m["mountPath"]: m for m in main(pod, container)["volumeMounts"]}
        assert mounts["/opt/airflow/git-ssh"]["readOnly"] is True, workload
    conn = json.loads(
        next(s for s in r.secrets.secrets if s["metadata"]["name"] == "airflow-git-ssh")["stringData"]["connection"]
    )
    assert conn["extra"] == {
        "key_file": "/opt/airflow/git-ssh/gitSshKey",
        "known_hosts_file": "/opt/airflow/git-ssh/known_hosts",
        "strict_host_key_checking": "yes",
    }


def test_kubernetes_chart_creates_our_admin_never_admin_admin(tmp_path, chart_dir):
    r, docs, cm, pods = rendered(tmp_path, chart_dir, "git-sync")
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("create-user"))
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["AIRFLOW_GITOPS_ADMIN_PASSWORD"]["secretKeyRef"] == {"name": "airflow-admin-password", "key": "password"}
    script = c["args"][-1]
    assert "airflow users create" in script and "-p" not in script.split() and "--password" not in script
    assert "FabAuthManager" in cm["data"]["airflow.cfg"]
    # No rendered object holds a default or generated password.
    password = next(s for s in r.secrets.secrets if s["metadata"]["name"] == "airflow-admin-password")
    text = (tmp_path / "out" / "chart.yaml").read_text()
    assert password["stringData"]["password"] not in text
    assert not [line for line in text.splitlines() if line.strip() in ("- admin", "password: admin")]


def test_node_selector_tolerations_and_side_images_reach_every_pod(tmp_path, chart_dir):
    spec = spec_in(
        tmp_path,
        kubernetes={
            "node_selector": {"pool": "airflow"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "airflow", "effect": "NoSchedule"}],
            "git_sync_image": "registry.example.com/mirror/git-sync:v4.4.2",
            "statsd_image": "registry.example.com/mirror/statsd-exporter:v0.29.0",
        },
    )
    render(spec, tmp_path / "out", chart=str(chart_dir))
    docs = [d for d in yaml.safe_load_all((tmp_path / "out" / "chart.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "airflow-config")
    pods = {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if "template" in d.get("spec", {})
    }
    pods["pod_template_file"] = yaml.safe_load(cm["data"]["pod_template_file.yaml"])["spec"]
    assert {"Deployment/airflow-scheduler", "Deployment/airflow-statsd", "pod_template_file"} <= set(pods)
    for name, pod in pods.items():
        assert pod.get("nodeSelector") == {"pool": "airflow"}, name
        assert {"key": "dedicated", "operator": "Equal", "value": "airflow", "effect": "NoSchedule"} in (
            pod.get("tolerations") or []
        ), name
    images = {c["image"] for pod in pods.values() for c in containers(pod)}
    assert "registry.example.com/mirror/git-sync:v4.4.2" in images
    assert "registry.example.com/mirror/statsd-exporter:v0.29.0" in images
    assert not [i for i in images if i.startswith(("registry.k8s.io/", "quay.io/"))]


@pytest.mark.parametrize(
    ("over", "word"),
    [
        ({"node_selector": {"bad key!": "x"}}, "node_selector"),
        ({"tolerations": [{"operator": "Sometimes"}]}, "tolerations"),
        ({"git_sync_image": "--post-renderer=/tmp/x"}, "git_sync_image"),
        ({"statsd_image": "no-tag"}, "statsd_image"),
    ],
)
def test_bad_placement_or_image_refs_are_one_clear_error(tmp_path, over, word):
    from airflow_gitops.spec import SpecError

    with pytest.raises(SpecError) as err:
        spec_in(tmp_path, kubernetes=over)
    assert f"kubernetes.{word}" in str(err.value)


JINJA_CONFIG = {
    "logging": {"log_filename_template": "dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/{{- try_number }}.log"},
    "webserver": {"instance_name": "{{ .Values.data.metadataSecretName }} }} {{"},
}


def helm_binary() -> Path:
    """helm of the Kubernetes binaries the lead builds (scripts/kube-up.sh bin-dir); under CI it must be there."""
    import subprocess

    bin_dir = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[1] / "scripts" / "kube-up.sh"), "bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    helm = Path(bin_dir) / "helm"
    if not os.access(helm, os.X_OK):
        reason = f"{helm} not built: run scripts/kube-up.sh build"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return helm


def test_kubernetes_chart_keeps_jinja_in_airflow_config_literal(tmp_path, chart_dir):
    """The chart runs every config value through Helm's ``tpl``: a value with ``{{ }}`` reaches airflow.cfg as
    written, rendered by helm-python-sdk and by the helm binary from the written values.yaml."""
    import subprocess

    spec = spec_in(tmp_path, airflow={"config": JINJA_CONFIG})
    render(spec, tmp_path / "out", chart=str(chart_dir))
    helm = subprocess.run(
        [str(helm_binary()), "template", "airflow", str(chart_dir), "-n", "airflow", "-f", "out/values.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert helm.returncode == 0, helm.stderr
    for text in ((tmp_path / "out" / "chart.yaml").read_text(), helm.stdout):
        docs = [d for d in yaml.safe_load_all(text) if d]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "airflow-config")
        lines = cm["data"]["airflow.cfg"].splitlines()
        for section in JINJA_CONFIG.values():
            for key, value in section.items():
                assert f"{key} = {value}" in lines, (key, [ln for ln in lines if ln.startswith(key)])


@pytest.mark.parametrize("persistence", [True, False])
def test_remote_logging_reaches_airflow_cfg_of_every_pod(tmp_path, chart_dir, persistence):
    """logs.remote: s3 - the chart's airflow.cfg (the ConfigMap the scheduler, the API server and every
    KubernetesExecutor task pod mount) has the [logging] remote keys; each of those pods has the logs
    Connection (region, the S3 endpoint of aws.endpoint_url) in its env; the image gets the amazon
    provider. The logs PVC stays as the seed has it (persistence: true) or is gone (false)."""
    spec = spec_in(tmp_path, logs={"remote": "s3", "remote_prefix": "prod/airflow", "persistence": persistence})
    r = render(spec, tmp_path / "out", chart=str(chart_dir))
    docs = [d for d in yaml.safe_load_all((tmp_path / "out" / "chart.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "airflow-config")
    cfg = cm["data"]["airflow.cfg"]
    import configparser

    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(cfg)
    assert parsed["logging"]["remote_logging"] == "True"
    assert parsed["logging"]["remote_base_log_folder"] == "s3://mlops-data/prod/airflow"
    assert parsed["logging"]["remote_log_conn_id"] == "airflow_gitops_logs"
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }
    pods["pod_template_file"] = yaml.safe_load(cm["data"]["pod_template_file.yaml"])["spec"]
    want_conn = {
        "conn_type": "aws",
        "extra": {
            "region_name": "ap-northeast-2",
            "service_config": {"s3": {"endpoint_url": "https://s3.example.com"}},
        },
    }
    for workload, container in [
        ("airflow-scheduler", "scheduler"),
        ("airflow-api-server", "api-server"),
        ("pod_template_file", "base"),
    ]:
        pod = pods[workload]
        c = main(pod, container)
        # airflow.cfg comes from that ConfigMap in this pod too.
        cfg_vols = {v["name"] for v in pod["volumes"] if (v.get("configMap") or {}).get("name") == "airflow-config"}
        assert any(m["name"] in cfg_vols and m["mountPath"].endswith("/airflow.cfg") for m in c["volumeMounts"]), (
            workload
        )
        assert json.loads(env_of(c)["AIRFLOW_CONN_AIRFLOW_GITOPS_LOGS"]) == want_conn, workload
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == (["airflow-logs"] if persistence else []), workload
    manifests = [d for d in yaml.safe_load_all((tmp_path / "out" / "manifests.yaml").read_text()) if d]
    assert [d["kind"] for d in manifests if d["kind"] == "PersistentVolumeClaim"] == (
        ["PersistentVolumeClaim"] if persistence else []
    )
    reqs = (tmp_path / "out" / "image" / "requirements.txt").read_text()
    assert "apache-airflow-providers-amazon==" in reqs
    assert "secret" not in json.dumps(want_conn).lower() and "aws_secret_access_key" not in cfg
    assert r is not None


def test_notes_name_the_log_storage_to_provide(tmp_path):
    """NOTES.md asks for RWX storage only where a logs PVC is rendered, and names logs.remote as the way out."""
    notes = {}
    for persistence in (True, False):
        for remote in ("s3", None):
            out = tmp_path / f"{persistence}-{remote}"
            out.mkdir()
            render(spec_in(out, logs={"persistence": persistence, "remote": remote}), out / "out")
            notes[persistence, remote] = (out / "out" / "NOTES.md").read_text()
    assert "ReadWriteMany storage" in notes[True, None] and "`logs.remote: s3`" in notes[True, None]
    assert "the logs PVC `airflow-logs`" in notes[True, None] and "s3://" not in notes[True, None]
    assert "ReadWriteMany storage" in notes[True, "s3"] and "s3://mlops-data/airflow-logs/" in notes[True, "s3"]
    assert "ReadWriteMany" not in notes[False, "s3"] and "s3://mlops-data/airflow-logs/" in notes[False, "s3"]
    assert "the logs PVC" not in notes[False, "s3"]
    assert "gone with it" in notes[False, None]


def test_mlflow_login_reaches_every_pod_that_runs_dag_code_from_its_secret(tmp_path, chart_dir, monkeypatch):
    """mlflow.username / mlflow.password (the user's own MLflow with its basic-auth app): the password, read
    from the environment when rendering, is in the Secret secrets.mlflow_secret and nowhere else; every
    Airflow pod (the task pods' template among them) and the serving pods read both from that Secret; a
    new password changes the checksum that rolls the pods."""
    import secrets as pysecrets

    password = pysecrets.token_urlsafe(24)
    monkeypatch.setenv("TEST_MLFLOW_PASSWORD", password)
    login = {"username": "pipeline", "password": "${TEST_MLFLOW_PASSWORD}"}
    spec = spec_in(tmp_path, mlflow=login, serving={"enabled": True})
    r = render(spec, tmp_path / "out", chart=str(chart_dir))
    mlflow_secret = next(s for s in r.secrets.secrets if s["metadata"]["name"] == "mlflow-credentials")
    assert mlflow_secret["stringData"] == {"username": "pipeline", "password": password}
    assert (tmp_path / "out" / "secrets.yaml").stat().st_mode & 0o777 == 0o600
    for written in (tmp_path / "out").rglob("*"):
        if written.is_file() and written.name != "secrets.yaml":
            assert password not in written.read_text(errors="replace"), f"the MLflow password is in {written}"
    docs = [d for d in yaml.safe_load_all((tmp_path / "out" / "chart.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "airflow-config")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }
    pods["pod_template_file"] = yaml.safe_load(cm["data"]["pod_template_file.yaml"])["spec"]
    serving = next(
        d
        for d in yaml.safe_load_all((tmp_path / "out" / "serving.yaml").read_text())
        if d and d["kind"] == "Deployment"
    )
    pods["serving"] = serving["spec"]["template"]["spec"]
    wanted = {
        "MLFLOW_TRACKING_USERNAME": {"secretKeyRef": {"name": "mlflow-credentials", "key": "username"}},
        "MLFLOW_TRACKING_PASSWORD": {"secretKeyRef": {"name": "mlflow-credentials", "key": "password"}},
    }
    for workload, name in [*PODS, ("serving", "serving")]:
        env = env_of(main(pods[workload], name))
        got = {k: env.get(k) for k in wanted}
        assert got == wanted, (workload, got)

    def fingerprints(r) -> tuple[str, str]:
        [deployment] = [d for d in r.serving if d["kind"] == "Deployment"]
        serving_pods = deployment["spec"]["template"]["metadata"]["annotations"]
        airflow_pods = r.values["airflowPodAnnotations"]
        return airflow_pods["airflow-gitops/mlflow-login-checksum"], serving_pods[
            "airflow-gitops/mlflow-login-checksum"
        ]

    before = fingerprints(r)
    assert fingerprints(render(spec, tmp_path / "out1", chart=str(chart_dir))) == before  # stable
    monkeypatch.setenv("TEST_MLFLOW_PASSWORD", pysecrets.token_urlsafe(24))
    after = fingerprints(render(spec, tmp_path / "out2", chart=str(chart_dir)))
    assert after[0] != before[0] and after[1] != before[1]  # both the Airflow pods and the serving pods roll


def test_mlflow_login_that_does_not_resolve_stops_render_naming_the_key(tmp_path, chart_dir, monkeypatch):
    from airflow_gitops.spec import SpecError

    monkeypatch.delenv("TEST_MLFLOW_PASSWORD", raising=False)
    spec = spec_in(tmp_path, mlflow={"username": "pipeline", "password": "${TEST_MLFLOW_PASSWORD}"})
    with pytest.raises(SpecError) as err:
        render(spec, tmp_path / "out", chart=str(chart_dir))
    assert [p for p, _ in err.value.problems] == ["mlflow.password"]
    assert "TEST_MLFLOW_PASSWORD" in err.value.problems[0][1]
    assert not (tmp_path / "out" / "values.yaml").exists()
