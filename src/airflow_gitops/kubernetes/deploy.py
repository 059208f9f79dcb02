"""``airflow-gitops deploy``: render, check the cluster, apply the Secrets, ``helm upgrade --install``.

Order matters for "nothing half-applied": everything local (render, kubeconfig), the API server's
reachability and every permission the deploy needs (SelfSubjectAccessReview) are checked before the
first write to the cluster. Secrets are applied server-side (field manager airflow-gitops); helm waits
for the workloads to be ready and the Jobs to finish. Secret values are never printed: only names and
key names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import PlatformError
from ..spec import PlatformSpec
from . import serving as serving_k8s
from .cluster import connect
from .render import CHART_NAME, ChartRef, Rendered, render

HELM_TIMEOUT = 600
FIELD_MANAGER = "airflow-gitops"
# What `deploy` writes itself (namespaced) and what the official chart creates with our values: the
# kubeconfig's user must be allowed all of it before anything is written.
NEEDED = [
    ("", "secrets", ("get", "create", "patch")),
    ("", "persistentvolumeclaims", ("get", "create")),
    ("", "configmaps", ("create", "patch")),
    ("", "services", ("create", "patch")),
    ("", "serviceaccounts", ("create", "patch")),
    ("apps", "deployments", ("create", "patch")),
    ("apps", "statefulsets", ("create", "patch")),
    ("batch", "jobs", ("create", "delete")),
    ("rbac.authorization.k8s.io", "roles", ("create", "patch")),
    ("rbac.authorization.k8s.io", "rolebindings", ("create", "patch")),
    ("networking.k8s.io", "ingresses", ("create", "patch")),
]
# The serving objects (kubernetes/serving.py): applied, removed when serving is turned off, pods watched.
SERVING_NEEDED = [
    ("apps", "deployments", ("get", "list", "delete")),
    ("apps", "replicasets", ("list",)),
    ("", "services", ("get", "list", "delete")),
    ("", "pods", ("list",)),
    ("policy", "poddisruptionbudgets", ("get", "list", "create", "patch", "delete")),
    ("networking.k8s.io", "ingresses", ("get", "list", "delete")),
]


def missing_permissions(api, namespace: str, *, namespace_exists: bool) -> list[str]:
    """Every verb/resource this deploy needs that the kubeconfig's user may NOT do (SelfSubjectAccessReview)."""
    from kubernetes import client

    authz = client.AuthorizationV1Api(api)
    wanted = [(g, r, v, namespace) for g, r, verbs in NEEDED + SERVING_NEEDED for v in verbs]
    if not namespace_exists:
        wanted.append(("", "namespaces", "create", None))
    missing = []
    for group, resource, verb, ns in wanted:
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(group=group, resource=resource, verb=verb, namespace=ns)
            )
        )
        if not authz.create_self_subject_access_review(review, _request_timeout=10).status.allowed:
            missing.append(f"{verb} {resource}{'.' + group if group else ''}")
    return missing


def _namespace_exists(api, name: str) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(api).read_namespace(name, _request_timeout=10)
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        if err.status == 403:
            return False  # cannot even read it: the permission check names what is missing
        raise


def _apply(api, doc: dict[str, Any], *, dry_run: bool) -> str:
    """Create a Namespace/PVC if missing; server-side apply a Secret. Returns what happened."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    kind, name = doc["kind"], doc["metadata"]["name"]
    ns = doc["metadata"].get("namespace")
    read = {
        "Namespace": lambda: core.read_namespace(name),
        "PersistentVolumeClaim": lambda: core.read_namespaced_persistent_volume_claim(name, ns),
        "Secret": lambda: core.read_namespaced_secret(name, ns),
    }[kind]
    try:
        current = read()
    except ApiException as err:
        if err.status != 404:
            raise PlatformError(
                f"reading {kind} {name} failed: HTTP {err.status} {err.reason}",
                "check your permissions in the namespace (kubectl auth can-i)",
            ) from None
        current = None
    try:
        if kind != "Secret":
            if current is not None:
                return "exists"  # namespaces and PVC specs are immutable enough: never replace them
            if dry_run:
                return "would create"
            if kind == "Namespace":
                core.create_namespace(doc)
            else:
                core.create_namespaced_persistent_volume_claim(ns, doc)
            return "created"
        if current is not None and _secret_unchanged(current, doc):
            return "unchanged"
        if dry_run:
            return "would create" if current is None else "would update"
        # Server-side apply: the API server merges and records airflow-gitops as the keys' manager.
        core.patch_namespaced_secret(
            name, ns, doc, field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml"
        )
        return "created" if current is None else "updated"
    except ApiException as err:
        # Never echo err.body: for a Secret it could quote the request.
        raise PlatformError(
            f"applying {kind} {name} failed: HTTP {err.status} {err.reason}",
            "check your permissions in the namespace (kubectl auth can-i create secrets -n NAMESPACE)",
        ) from None


def _secret_unchanged(current, doc: dict[str, Any]) -> bool:
    import base64

    data = getattr(current, "data", None) or {}
    want = {k: base64.b64encode(v.encode()).decode() for k, v in doc.get("stringData", {}).items()}
    return data == want


def helm_upgrade(
    spec: PlatformSpec,
    r: Rendered,
    chart: str | None,
    *,
    dry_run: bool,
    console,
    wait: bool = True,
    timeout: int = HELM_TIMEOUT,
) -> str:
    ref = ChartRef.parse(chart or spec.kubernetes.chart, spec)
    k = spec.kubernetes
    helm_bin = shutil.which("helm")
    if helm_bin:
        cmd = [helm_bin, "upgrade", "--install", k.release, str(ref.path or CHART_NAME), "--namespace", k.namespace]
        cmd += ["--values", str(r.out / "values.yaml"), "--timeout", f"{timeout}s"]
        if ref.repo:
            cmd += ["--repo", ref.repo, "--version", ref.version]
        if k.context:
            cmd += ["--kube-context", k.context]
        if dry_run:
            cmd += ["--dry-run=server"]
        # No --wait: the chart's migration and create-user Jobs are post-install/post-upgrade hooks and
        # its pods wait for the migrations, so `helm --wait` (ready pods before hooks) never ends on a
        # real cluster. helm waits for the hook Jobs by itself; wait_ready then waits for the workloads.
        cmd += ["--output", "json"]  # the release as JSON: its manifest is summarised, its notes never printed
        console.print(f"$ {' '.join(cmd)}", highlight=False)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        if proc.returncode != 0:
            raise PlatformError(
                f"helm upgrade --install failed: {proc.stderr.strip()[-1500:]}",
                "fix the error above; `kubectl -n NAMESPACE get pods,jobs` shows what is not ready",
            )
        try:
            manifest = json.loads(proc.stdout).get("manifest", "")
        except ValueError:
            manifest = ""
        return _summary(manifest, dry_run)
    import helm_python as helm

    cfg = helm.Config(kube_context=k.context, namespace=k.namespace)
    kwargs: dict[str, Any] = dict(namespace=k.namespace, dry_run="server" if dry_run else None)
    if ref.repo:
        kwargs.update(chart_repo_url=ref.repo, chart_version=ref.version)
    chart_arg = str(ref.path or CHART_NAME)
    console.print(
        f"helm-python-sdk: upgrade --install {k.release} {ref.path or f'{ref.repo}@{ref.version}'}", highlight=False
    )
    try:
        try:
            rel = cfg.upgrade(chart_arg, k.release, r.values, timeout=timeout, **kwargs)
        except helm.HelmNotFoundError:
            rel = cfg.install(chart_arg, k.release, r.values, timeout=timeout, **kwargs)
    except helm.HelmError as err:
        raise PlatformError(f"helm upgrade --install failed: {err}", "fix the error above") from None
    manifest = rel.get("manifest", "") if isinstance(rel, dict) else getattr(rel, "manifest", "")
    return _summary(manifest or "", dry_run)


def _summary(manifest: str, dry_run: bool) -> str:
    """Kinds and names in a helm manifest (never the manifest itself: it may hold chart-made secrets)."""
    import yaml

    items = []
    try:
        for doc in yaml.safe_load_all(manifest):
            if isinstance(doc, dict) and "kind" in doc:
                items.append(f"{doc['kind']}/{doc.get('metadata', {}).get('name')}")
    except yaml.YAMLError:
        pass
    verb = "would apply" if dry_run else "applied"
    return f"{verb} {len(items)} chart resources" + (f": {', '.join(items[:40])}" if items else "")


def deploy_command(
    spec: PlatformSpec,
    out: Path,
    *,
    chart: str | None,
    dry_run: bool,
    console,
    wait: bool = True,
    timeout: int = HELM_TIMEOUT,
) -> None:
    r = render(spec, out, chart=chart)  # local and pure: fails before touching the cluster
    api = connect(spec)  # reachability before any write
    if r.chart_version is None and "Kubernetes" in spec.airflow.executor:
        # The worker pod template is derived from the chart this deploy installs: pull it and render with it.
        r = render(spec, out, chart=chart, load_official=True)
    ns = spec.kubernetes.namespace
    missing = missing_permissions(api, ns, namespace_exists=_namespace_exists(api, ns))
    if missing:
        raise PlatformError(
            f"the kubeconfig's user may not {', '.join(missing)} in namespace {ns}; nothing was applied",
            f"ask a cluster admin for a Role/RoleBinding in {ns} granting these "
            f"(check with `kubectl auth can-i create secrets -n {ns}`), or use another kubernetes.context",
        )
    new_namespace = False
    for doc in r.manifests + r.secrets.secrets:
        state = _apply(api, doc, dry_run=dry_run)
        keys = ", ".join(sorted(doc.get("stringData", {}))) if doc["kind"] == "Secret" else ""
        console.print(
            f"  {doc['kind']}/{doc['metadata']['name']}: {state}" + (f" (keys: {keys})" if keys else ""),
            highlight=False,
        )
        if doc["kind"] == "Namespace" and state == "would create":
            new_namespace = True
    if dry_run and new_namespace:
        console.print("helm: would install the release (server-side dry run needs the namespace; skipped)")
        return
    try:
        summary = helm_upgrade(spec, r, chart, dry_run=dry_run, console=console, wait=wait, timeout=timeout)
    except PlatformError as err:
        # A hook Job that never finishes (an image that cannot be pulled, a database it cannot reach)
        # times helm out: say which pods are stuck and why.
        pods = [] if dry_run else _pod_problems(api, ns, spec.kubernetes.release)
        if not pods:
            raise
        raise PlatformError(f"{err.problem}. Pods not ready: {'; '.join(pods[:8])}", err.fix) from None
    console.print(summary, highlight=False)
    for line in apply_serving(api, spec, r.serving, dry_run=dry_run):
        console.print(f"  {line}", highlight=False)
    if r.serving:
        console.print(f"  {serving_follow_note(spec)}", highlight=False)
    if wait and not dry_run:
        ready = wait_ready(api, spec, timeout=timeout)
        console.print(f"ready: {', '.join(ready) or 'no workloads'}", highlight=False)
        if r.serving:
            console.print(wait_serving_running(api, spec, timeout=timeout), highlight=False)
    if r.secrets.deploy_public_key:
        console.print(f"Deploy key (public half): {r.secrets.deploy_public_key}", highlight=False, soft_wrap=True)


def _not_ready(kind: str, obj) -> str | None:
    """Why a Deployment/StatefulSet is not rolled out and ready yet, or None."""
    want = obj.spec.replicas if obj.spec.replicas is not None else 1
    st = obj.status
    if (st.observed_generation or 0) < (obj.metadata.generation or 0):
        return "its new spec is not observed yet"
    if (st.updated_replicas or 0) < want:
        return f"{st.updated_replicas or 0}/{want} pods updated"
    if (st.ready_replicas or 0) < want:
        return f"{st.ready_replicas or 0}/{want} pods ready"
    if kind == "StatefulSet" and st.update_revision and st.current_revision != st.update_revision:
        return "rolling to a new revision"
    return None


def _pod_problems(api, ns: str, release: str) -> list[str]:
    """Pods of the release that are not ready, with their containers' waiting/terminated reasons."""
    from kubernetes import client

    out = []
    for pod in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"release={release}").items:
        if pod.status.phase == "Succeeded":
            continue
        statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        reasons = []
        for c in statuses:
            state = c.state
            if state.waiting and state.waiting.reason not in (None, "PodInitializing", "ContainerCreating"):
                reasons.append(f"{c.name}: {state.waiting.reason} {(state.waiting.message or '')[:200]}".strip())
            elif state.terminated and state.terminated.exit_code:
                reasons.append(f"{c.name}: exited {state.terminated.exit_code} ({state.terminated.reason})")
            elif not c.ready and state.running and c.restart_count:
                reasons.append(f"{c.name}: restarted {c.restart_count} times")
        ready = any(cond.type == "Ready" and cond.status == "True" for cond in pod.status.conditions or [])
        if not ready:
            out.append(f"{pod.metadata.name} ({pod.status.phase}{': ' + '; '.join(reasons) if reasons else ''})")
    return out


def _restarts(api, ns: str, release: str) -> dict[str, int]:
    from kubernetes import client

    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"release={release}").items
    return {
        f"{p.metadata.name}/{c.name}": c.restart_count
        for p in pods
        if p.status.phase == "Running"
        for c in p.status.container_statuses or []
    }


def wait_ready(api, spec: PlatformSpec, *, timeout: float, poll: float = 2.0) -> list[str]:
    """Wait until every Deployment and StatefulSet of the release is rolled out with all pods ready.

    Returns them; on timeout one PlatformError naming what is not ready and why (image pulls, crashes)."""
    import time

    from kubernetes import client

    apps = client.AppsV1Api(api)
    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    deadline = time.monotonic() + timeout
    stable: dict[str, int] | None = None
    while True:
        pending: dict[str, str] = {}
        names: list[str] = []
        for kind, items in (
            ("Deployment", apps.list_namespaced_deployment(ns, label_selector=f"release={release}").items),
            ("StatefulSet", apps.list_namespaced_stateful_set(ns, label_selector=f"release={release}").items),
        ):
            for obj in items:
                name = f"{kind}/{obj.metadata.name}"
                names.append(name)
                why = _not_ready(kind, obj)
                if why:
                    pending[name] = why
        if not pending:
            # Ready once is not enough: a container that crashes after its first start (a missing module,
            # a bad config) shows as a restart within seconds. Ready twice, with no new restart, is.
            restarts = _restarts(api, ns, release)
            if stable is not None and restarts == stable:
                return names
            stable = restarts
            time.sleep(max(poll, 15.0))
            continue
        stable = None
        if time.monotonic() > deadline:
            pods = _pod_problems(api, ns, release)
            raise PlatformError(
                f"after {timeout:.0f}s not ready: "
                + "; ".join(f"{n} ({w})" for n, w in sorted(pending.items()))
                + (f". Pods: {'; '.join(pods[:8])}" if pods else ""),
                f"see `kubectl -n {ns} describe pods -l release={release}` and "
                f"`kubectl -n {ns} logs POD --all-containers`",
            )
        time.sleep(poll)


def restart_airflow(api, spec: PlatformSpec) -> list[str]:
    """Roll every Deployment/StatefulSet of the release (as `kubectl rollout restart` does): pods then
    read the Secrets again (a new Fernet key list, say). Returns what was restarted."""
    import datetime

    from kubernetes import client

    apps = client.AppsV1Api(api)
    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
    selector = f"release={release}"
    done = []
    for item in apps.list_namespaced_deployment(ns, label_selector=selector).items:
        apps.patch_namespaced_deployment(item.metadata.name, ns, patch)
        done.append(f"Deployment/{item.metadata.name}")
    for item in apps.list_namespaced_stateful_set(ns, label_selector=selector).items:
        apps.patch_namespaced_stateful_set(item.metadata.name, ns, patch)
        done.append(f"StatefulSet/{item.metadata.name}")
    return done


def apply_fernet_secret(spec: PlatformSpec, console) -> None:
    """Write STATE_DIR/secrets/fernet.key's key list into the cluster's Secret and restart the pods."""
    from .manifests import fernet_secret

    api = connect(spec)
    doc = fernet_secret(spec)
    state = _apply(api, doc, dry_run=False)
    console.print(f"  Secret/{doc['metadata']['name']}: {state}", highlight=False)
    restarted = restart_airflow(api, spec)
    console.print(f"  restarted: {', '.join(restarted) or 'nothing (no release yet)'}", highlight=False)


# --- the serving component (kubernetes/serving.py) -----------------------------------------------------
def _serving_api(api, kind: str):
    """(API object, method suffix) for one serving kind."""
    from kubernetes import client

    return {
        "Deployment": (client.AppsV1Api(api), "namespaced_deployment"),
        "Service": (client.CoreV1Api(api), "namespaced_service"),
        "PodDisruptionBudget": (client.PolicyV1Api(api), "namespaced_pod_disruption_budget"),
        "Ingress": (client.NetworkingV1Api(api), "namespaced_ingress"),
    }[kind]


def serving_follow_note(spec: PlatformSpec) -> str:
    """How the serving pods follow the alias here (``serving.webhook``, on by default, is the local target's)."""
    how = f"serving follows @{spec.serving.alias} by polling every {spec.serving.poll_interval:g} s"
    if spec.serving.webhook:
        how += " (serving.webhook is for the local target; on Kubernetes the pods poll: docs/kubernetes.md)"
    return how


def apply_serving(api, spec: PlatformSpec, docs: list[dict[str, Any]], *, dry_run: bool) -> list[str]:
    """Server-side apply the serving objects; delete ours that platform.yaml no longer asks for (all of
    them with ``serving.enabled: false``, the Ingress without ``serving.ingress_host``...). What happened,
    one line per object."""
    from kubernetes.client.exceptions import ApiException

    ns = spec.kubernetes.namespace
    want = {(d["kind"], d["metadata"]["name"]) for d in docs}
    lines = []
    try:
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            obj, suffix = _serving_api(api, kind)
            try:
                before = getattr(obj, f"read_{suffix}")(name, ns).metadata.resource_version
            except ApiException as err:
                if err.status != 404:
                    raise
                before = None
            if dry_run:
                lines.append(f"{kind}/{name}: {'would create' if before is None else 'would apply'}")
                continue
            after = getattr(obj, f"patch_{suffix}")(
                name, ns, doc, field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml"
            ).metadata.resource_version
            lines.append(
                f"{kind}/{name}: " + ("created" if before is None else "unchanged" if before == after else "updated")
            )
        for kind in serving_k8s.KINDS:
            obj, suffix = _serving_api(api, kind)
            for item in getattr(obj, f"list_{suffix}")(ns, label_selector=serving_k8s.label_selector(spec)).items:
                if (kind, item.metadata.name) in want:
                    continue
                if not dry_run:
                    getattr(obj, f"delete_{suffix}")(item.metadata.name, ns, propagation_policy="Background")
                lines.append(f"{kind}/{item.metadata.name}: {'would delete' if dry_run else 'deleted'} (serving)")
    except ApiException as err:
        raise PlatformError(
            f"applying the serving objects failed: HTTP {err.status} {err.reason}",
            f"check your permissions in {ns} (kubectl auth can-i create deployments -n {ns}); "
            "or set serving.enabled: false",
        ) from None
    return lines


def _serving_pods(api, spec: PlatformSpec):
    """(wanted replicas, the pods of the Deployment's CURRENT template, why not rolled out yet or None)."""
    from kubernetes import client

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    ns, name = spec.kubernetes.namespace, serving_k8s.name(spec)
    dep = apps.read_namespaced_deployment(name, ns)
    want = dep.spec.replicas if dep.spec.replicas is not None else 1
    if (dep.status.observed_generation or 0) < (dep.metadata.generation or 0):
        return want, [], "its new spec is not observed yet"
    revision = (dep.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
    selector = serving_k8s.label_selector(spec)
    current = [
        rs
        for rs in apps.list_namespaced_replica_set(ns, label_selector=selector).items
        if (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision") == revision
        and any(o.uid == dep.metadata.uid for o in rs.metadata.owner_references or [])
    ]
    if not current:
        return want, [], "its ReplicaSet is not created yet"
    tpl_hash = (current[0].metadata.labels or {}).get("pod-template-hash")
    pods = [
        p
        for p in core.list_namespaced_pod(ns, label_selector=f"{selector},pod-template-hash={tpl_hash}").items
        if p.metadata.deletion_timestamp is None
    ]
    return want, pods, None


def _running(pod) -> bool:
    statuses = pod.status.container_statuses or []
    return pod.status.phase == "Running" and bool(statuses) and all(c.state.running for c in statuses)


def _stuck(pod) -> str | None:
    """A reason a serving pod will not get Running by waiting (a crash loop, an image that cannot be pulled)."""
    for c in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or []):
        waiting = c.state.waiting
        if waiting and waiting.reason in (
            "CrashLoopBackOff",
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CreateContainerConfigError",
        ):
            last = c.last_state.terminated if c.last_state else None
            code = f", last exit {last.exit_code}" if last else ""
            return f"{pod.metadata.name}: {c.name} {waiting.reason}{code} {(waiting.message or '')[:200]}".strip()
    return None


def wait_serving_running(api, spec: PlatformSpec, *, timeout: float, poll: float = 2.0) -> str:
    """Wait until every pod of the serving Deployment's current template is Running, with no container
    restarting between two looks. NOT Ready: readiness is "a model is loaded", and a fresh platform has
    none registered yet, so waiting for it would time out on a healthy deploy."""
    import time

    ns, name = spec.kubernetes.namespace, serving_k8s.name(spec)
    fix = (
        f"see `kubectl -n {ns} describe pods -l {serving_k8s.label_selector(spec)}` and "
        f"`kubectl -n {ns} logs deploy/{name}`"
    )
    deadline = time.monotonic() + timeout
    stable: dict[str, int] | None = None
    while True:
        want, pods, why = _serving_pods(api, spec)
        running = [p for p in pods if _running(p)]
        stuck = [s for p in pods if (s := _stuck(p))]
        if stuck:
            raise PlatformError(f"the serving pods do not start: {'; '.join(stuck[:4])}", fix)
        if why is None and len(running) >= want:
            restarts = {
                f"{p.metadata.name}/{c.name}": c.restart_count for p in running for c in p.status.container_statuses
            }
            if stable is not None and restarts == stable:
                ready = sum(
                    1
                    for p in running
                    if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                )
                return (
                    f"serving: Deployment/{name} {len(running)}/{want} pods running, {ready} ready "
                    "(ready = a model is loaded; none until the alias exists)"
                )
            stable = restarts
        else:
            stable = None
        if time.monotonic() > deadline:
            raise PlatformError(
                f"after {timeout:.0f}s the serving Deployment {name} has {len(running)}/{want} pods running"
                + (f" ({why})" if why else ""),
                fix,
            )
        time.sleep(poll)
