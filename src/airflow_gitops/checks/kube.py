"""Kubernetes target: namespace, the Secrets the chart reads (with their keys), the logs PVC (RWX).

Runs only with a kubeconfig (``KUBECONFIG`` or ``~/.kube/config``); otherwise every row is ``skip``
"not checked: no kubeconfig". Secret values are never read into the output: only key names.
"""

from __future__ import annotations

from .. import contract
from ..errors import PlatformError
from ..kubernetes.cluster import connect, kubeconfig_path
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip, warn


def _expected(spec: PlatformSpec) -> dict[str, dict[str, str]]:
    """Secret name -> {key: value} as `deploy` would write them, when every key already exists locally
    (a read-only check generates nothing); {} otherwise. Values stay in memory: compared, never shown."""
    from .. import keystore

    needed = [keystore.FERNET_KEY, keystore.API_SECRET_KEY, keystore.JWT_SECRET, keystore.ADMIN_PASSWORD]
    key_files = [spec.secrets_dir / n for n in needed]
    if spec.dags.is_ssh:
        key_files.append(spec.path(spec.dags.ssh_key_file))
    if not all(f.is_file() for f in key_files):
        return {}
    from ..kubernetes.manifests import build_secrets

    try:
        return {s["metadata"]["name"]: s["stringData"] for s in build_secrets(spec).secrets}
    except PlatformError:
        return {}


def _differs(secret, want: dict[str, str]) -> list[str]:
    import base64

    have = secret.data or {}
    return sorted(k for k, v in want.items() if k in have and base64.b64decode(have[k]).decode(errors="replace") != v)


def _logs_way_out(spec: PlatformSpec) -> str:
    """How to do without a ReadWriteMany logs volume: remote logging to the platform's bucket."""
    folder = f"s3://{spec.aws.bucket}/{spec.logs.remote_prefix}/"
    if spec.logs.remote:
        return f"or set logs.persistence: false: with logs.remote: {spec.logs.remote} the logs are in {folder} already"
    return f"or set logs.remote: s3 and logs.persistence: false (task logs then go to {folder}, no volume)"


def _tolerated(taint, tolerations) -> bool:
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.operator == "Exists" and (t.key is None or t.key == taint.key):
            return True
        if t.operator == "Equal" and t.key == taint.key and (t.value or "") == (taint.value or ""):
            return True
    return False


def schedulable_nodes(spec: PlatformSpec, core) -> list[str] | None:
    """Names of the nodes the platform's pods may run on (kubernetes.node_selector, tolerations, not
    cordoned); None when the nodes cannot be listed (e.g. RBAC: nodes are cluster-scoped)."""
    from kubernetes.client.exceptions import ApiException

    try:
        nodes = core.list_node(_request_timeout=10).items
    except (ApiException, OSError, ValueError):
        return None
    selector = spec.kubernetes.node_selector
    out = []
    for node in nodes:
        labels = node.metadata.labels or {}
        if any(labels.get(k) != v for k, v in selector.items()) or (node.spec and node.spec.unschedulable):
            continue
        taints = [t for t in (node.spec.taints or []) if t.effect in ("NoSchedule", "NoExecute")] if node.spec else []
        if all(_tolerated(t, spec.kubernetes.tolerations) for t in taints):
            out.append(node.metadata.name)
    return out


def _single_node_claim(spec: PlatformSpec, core, claim: str, modes: list[str]) -> CheckResult:
    """The logs claim is not ReadWriteMany: only pods on one node can mount it. With the KubernetesExecutor
    that is every task pod (the seed's setup); the scheduler and the API server otherwise. A fail where the
    pods can land on several nodes; a warning where the cluster has one (it works there) or its nodes
    cannot be listed."""
    row = "kube.logs_pvc"
    mode = ", ".join(modes) or "no access mode"
    if spec.airflow.executor == "KubernetesExecutor":
        who = (
            "with the KubernetesExecutor each task runs in a pod of its own, and one scheduled on another "
            "node cannot mount it (the task never starts)"
        )
    else:
        who = "the Airflow pods that mount it (scheduler, API server, workers) cannot run on different nodes"
    fix = (
        "recreate it ReadWriteMany on an RWX storage class (NFS, EFS, Azure Files) via logs.storage_class, "
        + _logs_way_out(spec)
    )
    nodes = schedulable_nodes(spec, core)
    if nodes is not None and len(nodes) > 1:
        return fail(row, f"PVC {claim} is {mode}: {who}; the pods can land on {len(nodes)} nodes", fix)
    where = (
        f"the cluster has one node the pods can run on ({nodes[0]}): it works until a second one is added"
        if nodes
        else "the nodes could not be listed"
    )
    return warn(row, f"PVC {claim} is {mode}: {who}; {where}", fix)


# Provisioners whose volumes are block devices, attachable to one node at a time: a ReadWriteMany claim
# on them is never provisioned (their drivers refuse the access mode).
SINGLE_NODE_PROVISIONERS = {
    "ebs.csi.aws.com": "AWS EBS",
    "kubernetes.io/aws-ebs": "AWS EBS",
    "pd.csi.storage.gke.io": "GCE persistent disk",
    "kubernetes.io/gce-pd": "GCE persistent disk",
    "disk.csi.azure.com": "Azure Disk",
    "kubernetes.io/azure-disk": "Azure Disk",
    "cinder.csi.openstack.org": "OpenStack Cinder",
    "kubernetes.io/cinder": "OpenStack Cinder",
    "dobs.csi.digitalocean.com": "DigitalOcean block storage",
    "csi.hetzner.cloud": "Hetzner volumes",
}
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def _storage_class_rows(spec: PlatformSpec, api) -> list[CheckResult]:
    """The logs PVC `deploy` will create (ReadWriteMany) on logs.storage_class, or the cluster's default
    class: a warning when that class's provisioner makes single-node volumes only (it would stay Pending)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    row, storage = "kube.logs_storage_class", client.StorageV1Api(api)
    try:
        if spec.logs.storage_class:
            sc = storage.read_storage_class(spec.logs.storage_class, _request_timeout=10)
        else:
            classes = storage.list_storage_class(_request_timeout=10).items
            sc = next(
                (c for c in classes if (c.metadata.annotations or {}).get(DEFAULT_CLASS) == "true"),
                None,
            )
    except ApiException as err:
        if err.status == 404 and spec.logs.storage_class:
            return [
                fail(
                    row,
                    f"logs.storage_class {spec.logs.storage_class!r} is not a storage class of this cluster",
                    "set logs.storage_class to one `kubectl get storageclass` lists (ReadWriteMany-capable), "
                    + _logs_way_out(spec),
                )
            ]
        return [skip(row, f"not checked: storage classes cannot be read (HTTP {err.status})")]
    if sc is None:
        return [skip(row, "no default storage class: the claim binds to a PersistentVolume made for it")]
    kind = SINGLE_NODE_PROVISIONERS.get(sc.provisioner)
    if kind is None:
        return [ok(row, f"the logs PVC will use storage class {sc.metadata.name} ({sc.provisioner})")]
    return [
        warn(
            row,
            f"the logs PVC `deploy` creates (ReadWriteMany) would use storage class {sc.metadata.name}, whose "
            f"provisioner {sc.provisioner} ({kind}) makes single-node volumes only: it would stay Pending",
            "set logs.storage_class to an RWX class (EFS, NFS, Azure Files, Filestore), " + _logs_way_out(spec),
        )
    ]


def kube_checks(spec: PlatformSpec) -> list[CheckResult]:
    if not kubeconfig_path().exists():
        return [
            skip(
                "kube.cluster",
                f"not checked: no kubeconfig ({kubeconfig_path()})",
                "set KUBECONFIG to check the namespace, Secrets and logs PVC before `deploy`",
            )
        ]
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        api = connect(spec)
    except PlatformError as err:
        return [fail("kube.cluster", str(err).replace("; nothing was applied", ""), err.fix)]
    core = client.CoreV1Api(api)
    ns = spec.kubernetes.namespace
    rows = [ok("kube.cluster", f"API server {api.configuration.host} answers")]
    try:
        core.read_namespace(ns, _request_timeout=10)
    except ApiException as err:
        if err.status == 404:
            rows.append(
                fail(
                    "kube.namespace",
                    f"namespace {ns!r} does not exist",
                    f"`airflow-gitops deploy` creates it (or kubectl create namespace {ns})",
                )
            )
            return rows
        rows.append(
            fail(
                "kube.namespace",
                f"cannot read namespace {ns!r}: HTTP {err.status} {err.reason}",
                "use a kubeconfig user allowed to read namespaces, secrets and PVCs",
            )
        )
        return rows
    rows.append(ok("kube.namespace", f"namespace {ns} exists"))
    expected = _expected(spec)
    for name, keys in contract.secret_keys(spec).items():
        row = f"kube.secret.{name}"
        try:
            secret = core.read_namespaced_secret(name, ns, _request_timeout=10)
        except ApiException as err:
            if err.status == 404:
                rows.append(
                    fail(
                        row,
                        f"Secret {ns}/{name} does not exist",
                        "`airflow-gitops deploy` creates it from STATE_DIR/secrets (or render + kubectl apply)",
                    )
                )
            else:
                rows.append(
                    fail(
                        row,
                        f"cannot read Secret {ns}/{name}: HTTP {err.status}",
                        "grant this user `get` on secrets in the namespace",
                    )
                )
            continue
        present = set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())
        empty = [k for k, v in (secret.data or {}).items() if not v]
        missing = [k for k in keys if k not in present]
        if missing:
            rows.append(
                fail(
                    row,
                    f"Secret {ns}/{name} lacks key {', '.join(missing)} (has: "
                    f"{', '.join(sorted(present)) or 'nothing'})",
                    f"recreate it with those keys: `airflow-gitops deploy` (the chart reads '{missing[0]}')",
                )
            )
        elif empty:
            rows.append(
                fail(
                    row,
                    f"Secret {ns}/{name} has empty key {', '.join(empty)}",
                    "`airflow-gitops deploy` rewrites it with the values from STATE_DIR/secrets",
                )
            )
        elif name in expected and (changed := _differs(secret, expected[name])):
            rows.append(
                fail(
                    row,
                    f"Secret {ns}/{name} key {', '.join(changed)} differs from what `deploy` writes from "
                    "STATE_DIR/secrets (edited by hand, or deployed from another state dir)",
                    "`airflow-gitops deploy` writes it back; if the cluster's value is the right one (a Fernet "
                    "key that encrypted stored values), copy it into STATE_DIR/secrets first",
                )
            )
        else:
            rows.append(ok(row, f"Secret {ns}/{name} has {', '.join(keys)}, as deployed"))
    if spec.logs.persistence:
        claim = spec.logs.existing_claim
        row = "kube.logs_pvc"
        try:
            pvc = core.read_namespaced_persistent_volume_claim(claim, ns, _request_timeout=10)
        except ApiException as err:
            rows.append(
                fail(
                    row,
                    f"PVC {ns}/{claim} does not exist"
                    if err.status == 404
                    else f"cannot read PVC {ns}/{claim}: HTTP {err.status}",
                    "`airflow-gitops deploy` creates it (ReadWriteMany, logs.size/logs.storage_class)",
                )
            )
            if err.status == 404:
                rows += _storage_class_rows(spec, api)
            return rows
        modes = list(pvc.spec.access_modes or [])
        phase = pvc.status.phase if pvc.status else "?"
        if "ReadWriteMany" not in modes:
            rows.append(_single_node_claim(spec, core, f"{ns}/{claim}", modes))
        elif phase != "Bound":
            rows.append(
                fail(
                    row,
                    f"PVC {ns}/{claim} is {phase}, not Bound",
                    f"check `kubectl -n {ns} describe pvc {claim}`: no RWX storage class may exist; "
                    + _logs_way_out(spec),
                )
            )
        else:
            rows.append(ok(row, f"PVC {ns}/{claim} is ReadWriteMany and Bound"))
    else:
        remote = contract.remote_log_folder(spec)
        rows.append(
            skip(
                "kube.logs_pvc",
                f"logs.persistence is off (task logs go to {remote}/)"
                if remote
                else "logs.persistence is off: a task's log is gone with its pod (logs.remote: s3 keeps them)",
            )
        )
    return rows
