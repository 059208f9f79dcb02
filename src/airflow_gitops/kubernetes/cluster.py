"""Cluster access, in one place: which kubeconfig, which context, and proof the API server answers."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PlatformError
from ..spec import PlatformSpec


def kubeconfig_path() -> Path:
    """``KUBECONFIG`` (read at call time: the client library reads it once, at import) or ~/.kube/config."""
    return Path(os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"))


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
        api = config.new_client_from_config(config_file=str(kubeconfig_path()), context=spec.kubernetes.context)
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
