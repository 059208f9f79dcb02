"""``airflow-gitops deploy``: render, check the cluster, apply the Secrets, ``helm upgrade --install``.

Order matters for "nothing half-applied": everything local (render, kubeconfig, reachability, the
namespace's permissions) is checked before the first write to the cluster. Secret values are never
printed: only names and key names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..errors import PlatformError
from ..spec import PlatformSpec
from .render import OFFICIAL_REPO, Rendered, render

HELM_TIMEOUT = 600


def _fix_kubeconfig(spec: PlatformSpec) -> str:
    ctx = f" with the context '{spec.kubernetes.context}'" if spec.kubernetes.context else ""
    return (
        f"point KUBECONFIG (or ~/.kube/config) at a cluster you can reach{ctx} and check with "
        "`kubectl get ns`; or set kubernetes.context in platform.yaml"
    )


def connect(spec: PlatformSpec):
    """An ``ApiClient`` for the spec's context, after proving the API server answers."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        # Read KUBECONFIG now: the client library only reads it once, at import.
        kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        api = config.new_client_from_config(config_file=kubeconfig, context=spec.kubernetes.context)
    except (ConfigException, FileNotFoundError, OSError) as err:
        try:
            config.load_incluster_config()
            api = client.ApiClient()
        except ConfigException:
            raise PlatformError(f"no usable kubeconfig: {err}; nothing was applied", _fix_kubeconfig(spec)) from None
    try:
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as err:  # urllib3 / ApiException / SSL errors: all mean "cannot talk to it"
        host = api.configuration.host
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {str(err)[:200]}"
        raise PlatformError(
            f"the Kubernetes API server at {host} is unreachable ({reason}); nothing was applied",
            _fix_kubeconfig(spec),
        ) from None
    return api


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


def _helm_chart(spec: PlatformSpec, chart: str | None) -> tuple[str, dict[str, str]]:
    """(chart reference, extra options) for helm: a folder, REPO@VERSION, or the official repository."""
    ref = chart or spec.kubernetes.chart
    if ref and Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser()), {}
    if ref and "@" in ref and "://" in ref:
        repo, _, version = ref.rpartition("@")
        return "airflow", {"repo": repo, "version": version}
    return "airflow", {"repo": OFFICIAL_REPO, "version": spec.kubernetes.chart_version}


def helm_upgrade(spec: PlatformSpec, r: Rendered, chart: str | None, *, dry_run: bool, console) -> str:
    ref, opts = _helm_chart(spec, chart)
    k = spec.kubernetes
    helm_bin = shutil.which("helm")
    if helm_bin:
        cmd = [helm_bin, "upgrade", "--install", k.release, ref, "--namespace", k.namespace]
        cmd += ["--values", str(r.out / "values.yaml"), "--timeout", f"{HELM_TIMEOUT}s"]
        if "repo" in opts:
            cmd += ["--repo", opts["repo"], "--version", opts["version"]]
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
    if "repo" in opts:
        kwargs.update(chart_repo_url=opts["repo"], chart_version=opts["version"])
    console.print(f"helm-python-sdk: upgrade --install {k.release} {ref} {opts}", highlight=False)
    try:
        try:
            rel = cfg.upgrade(ref, k.release, r.values, timeout=HELM_TIMEOUT, **kwargs)
        except helm.HelmNotFoundError:
            rel = cfg.install(ref, k.release, r.values, timeout=HELM_TIMEOUT, **kwargs)
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
