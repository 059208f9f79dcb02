"""``airflow-gitops deploy``: render, check the cluster, apply the Secrets, ``helm upgrade --install``.

Order matters for "nothing half-applied": everything local (render, kubeconfig, reachability, the
namespace's permissions) is checked before the first write to the cluster. Secret values are never
printed: only names and key names.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import PlatformError
from ..spec import PlatformSpec
from .cluster import connect
from .render import CHART_NAME, ChartRef, Rendered, render

HELM_TIMEOUT = 600


def _apply(api, doc: dict[str, Any], *, dry_run: bool) -> str:
    """Create or replace one Namespace/PVC/Secret; return 'created', 'replaced', 'unchanged' or 'would ...'."""
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
        if current is None:
            if dry_run:
                return "would create"
            if kind == "Namespace":
                core.create_namespace(doc)
            elif kind == "PersistentVolumeClaim":
                core.create_namespaced_persistent_volume_claim(ns, doc)
            else:
                core.create_namespaced_secret(ns, doc)
            return "created"
        if kind != "Secret":
            return "exists"  # namespaces and PVC specs are immutable enough: never replace them
        if _secret_unchanged(current, doc):
            return "unchanged"
        if dry_run:
            return "would replace"
        core.replace_namespaced_secret(name, ns, doc)
        return "replaced"
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


def helm_upgrade(spec: PlatformSpec, r: Rendered, chart: str | None, *, dry_run: bool, console) -> str:
    ref = ChartRef.parse(chart or spec.kubernetes.chart, spec)
    k = spec.kubernetes
    helm_bin = shutil.which("helm")
    if helm_bin:
        cmd = [helm_bin, "upgrade", "--install", k.release, str(ref.path or CHART_NAME), "--namespace", k.namespace]
        cmd += ["--values", str(r.out / "values.yaml"), "--timeout", f"{HELM_TIMEOUT}s"]
        if ref.repo:
            cmd += ["--repo", ref.repo, "--version", ref.version]
        if k.context:
            cmd += ["--kube-context", k.context]
        if dry_run:
            cmd += ["--dry-run=server"]
        console.print(f"$ {' '.join(cmd)}", highlight=False)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PlatformError(f"helm upgrade --install failed: {proc.stderr.strip()}", "fix the error above")
        return _summary(proc.stdout, dry_run)
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
            rel = cfg.upgrade(chart_arg, k.release, r.values, timeout=HELM_TIMEOUT, **kwargs)
        except helm.HelmNotFoundError:
            rel = cfg.install(chart_arg, k.release, r.values, timeout=HELM_TIMEOUT, **kwargs)
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


def deploy_command(spec: PlatformSpec, out: Path, *, chart: str | None, dry_run: bool, console) -> None:
    r = render(spec, out, chart=chart)  # local and pure: fails before touching the cluster
    api = connect(spec)  # reachability before any write
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
    console.print(helm_upgrade(spec, r, chart, dry_run=dry_run, console=console), highlight=False)
    if r.secrets.deploy_public_key:
        console.print(f"Deploy key (public half): {r.secrets.deploy_public_key}", highlight=False, soft_wrap=True)
