"""Smoke tests of the real local Kubernetes control plane (scripts/kube-up.sh, fixture ``kube_cluster``):
controllers, scheduler and kwok nodes work (a Deployment becomes ready, a Job completes), RBAC and
service-account tokens work, and ``helm upgrade --install --wait --wait-for-jobs`` completes twice.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_cluster import KubeCluster
from kubernetes import client, config

IMAGE = "registry.invalid/never-pulled:1"  # kwok runs no container: the image is never pulled


def wait_until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def api(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:  # noqa: F811
    with config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)) as c:
        yield c


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def pod_template(labels: dict[str, str], restart: str = "Always") -> client.V1PodTemplateSpec:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=client.V1PodSpec(
            restart_policy=restart,
            containers=[client.V1Container(name="main", image=IMAGE, command=["true"])],
        ),
    )


def test_version_and_nodes(api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.")
    nodes = client.CoreV1Api(api).list_node().items
    ready = [
        n.metadata.name for n in nodes if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    ]
    assert ready, "no Ready node"


def test_deployment_becomes_ready(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2, selector=client.V1LabelSelector(match_labels=labels), template=pod_template(labels)
            ),
        ),
    )
    wait_until(
        "2 ready replicas of Deployment web",
        lambda: (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0) == 2,
    )
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    assert all(p.status.phase == "Running" and p.spec.node_name for p in pods)


def test_job_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="once"),
            spec=client.V1JobSpec(backoff_limit=0, template=pod_template({"job": "once"}, restart="Never")),
        ),
    )

    def complete() -> bool:
        status = batch.read_namespaced_job_status("once", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_until("Job once to complete", complete)
    assert batch.read_namespaced_job_status("once", namespace).status.succeeded == 1


def test_service_account_rbac_and_token(api: client.ApiClient, namespace: str) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader-reads-pods"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )
    user = f"system:serviceaccount:{namespace}:reader"
    authz = client.AuthorizationV1Api(api)

    def allowed(verb: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, resource="pods"),
            )
        )
        return bool(authz.create_subject_access_review(review).status.allowed)

    # The RBAC authorizer sees a new RoleBinding through its informer, a moment after the create returns.
    deadline = time.monotonic() + 30
    while not allowed("list"):
        assert time.monotonic() < deadline, "the RoleBinding did not allow 'list' within 30 s"
        time.sleep(0.2)
    assert not allowed("delete")

    # Service-account tokens: a TokenRequest is signed, and the API server authenticates it.
    token = core.create_namespaced_service_account_token(
        "reader", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token
    review = client.AuthenticationV1Api(api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated and review.status.user.username == user
    # The controller-manager publishes the cluster CA into every namespace (projected token volumes).
    wait_until(
        "ConfigMap kube-root-ca.crt",
        lambda: core.list_namespaced_config_map(namespace, field_selector="metadata.name=kube-root-ca.crt").items,
    )


CHART_YAML = """apiVersion: v2
name: smoke
version: 0.1.0
"""

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: %(image)s
"""

JOB = """apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-migrate
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: %(image)s
"""

HOOK_JOB = """apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-hook-r{{ .Release.Revision }}
  annotations:
    helm.sh/hook: post-install,post-upgrade
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: hook
        image: %(image)s
"""

STATEFULSET = """apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .Release.Name }}-db
spec:
  serviceName: {{ .Release.Name }}-db
  replicas: 1
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: %(image)s
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"""


def make_chart(root: Path) -> Path:
    chart = root / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    for name, text in [("deployment", DEPLOYMENT), ("job", JOB), ("hook-job", HOOK_JOB), ("statefulset", STATEFULSET)]:
        (chart / "templates" / f"{name}.yaml").write_text(text % {"image": IMAGE})
    return chart


def test_helm_upgrade_install_waits_for_pods_and_jobs(
    kube_cluster: KubeCluster,  # noqa: F811
    api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    chart = make_chart(tmp_path)
    cmd = [str(kube_cluster.helm), "upgrade", "--install", "smoke", str(chart), "--namespace", namespace]
    cmd += ["--wait", "--wait-for-jobs", "--timeout", "3m"]
    env = kube_cluster.env()
    for revision in (1, 2):  # the second, identical upgrade must work too
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"helm upgrade #{revision} failed: {proc.stderr}"
        status = subprocess.run(
            [str(kube_cluster.helm), "status", "smoke", "--namespace", namespace, "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"status":"deployed"' in status.stdout.replace(" ", "")
        assert f'"version":{revision}' in status.stdout.replace(" ", "")
    job = client.BatchV1Api(api).read_namespaced_job_status("smoke-migrate", namespace)
    assert job.status.succeeded == 1
    sts = client.AppsV1Api(api).read_namespaced_stateful_set_status("smoke-db", namespace)
    assert sts.status.ready_replicas == 1
    pvc = client.CoreV1Api(api).read_namespaced_persistent_volume_claim("data-smoke-db-0", namespace)
    assert pvc.status.phase == "Bound"
    subprocess.run(
        [str(kube_cluster.helm), "uninstall", "smoke", "--namespace", namespace, "--wait"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def test_a_second_build_at_once_waits_for_the_first_instead_of_moving_its_output(kube_cluster):
    """Two `kube-up.sh build` at once shared one work folder: the second's `mv` took the first's output (seen:
    "build finished but .../etcd is missing"). Now the second waits on the versions' lock, then finds the
    binaries built. The first build is stood in for by a process holding that lock for 3 s."""
    from kube_cluster import KUBE_UP

    lock = kube_cluster.bin_dir.parent / "build.lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "3"])
    try:
        wait_until(
            "the stand-in to hold the lock", lambda: subprocess.run(["flock", "-n", str(lock), "true"]).returncode
        )
        proc = subprocess.run(["bash", str(KUBE_UP), "build"], capture_output=True, text=True, timeout=120)
        finished_first = holder.poll() is not None  # the build returned only after the holder let go
    finally:
        holder.wait(10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "another build of these versions is running" in proc.stderr + proc.stdout
    assert "binaries already built" in proc.stderr + proc.stdout
    assert finished_first
