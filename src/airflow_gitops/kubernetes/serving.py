"""The serving component on Kubernetes: a Deployment, its Service, a PodDisruptionBudget and an optional
Ingress, rendered into ``serving.yaml`` beside the chart's values and applied by ``deploy``.

Everything the Airflow pods are given comes from the same place here: the image (``images.airflow``),
the runtime environment (``values.runtime_env``: the MLflow URI, the AWS profile/region/endpoint), the
AWS credentials Secret at boto3's default place (``values.aws_volume``) and where pods run
(``values.placement``). The serving process reads its own settings from ``airflow_gitops.serving.ENV_*``.

On Kubernetes serving follows the alias by polling (``serving.poll_interval``): MLflow's webhook needs
an address MLflow can reach and a signing secret shared with it, which a cluster this tool does not run
MLflow in cannot give.

Readiness is "a model is loaded" (``/health``), so a fresh platform (nothing registered yet) has
Running pods that are not Ready: ``deploy`` waits for Running; liveness asks ``/metrics``, which answers
with or without a model.
"""

from __future__ import annotations

from typing import Any

from ..serving import process_env
from ..spec import PlatformSpec
from . import values as v
from .image import SERVING_CODE_DIR

PORT = 8000  # the container's port; the Service answers on 80
COMPONENT = "airflow-gitops-serving"  # app.kubernetes.io/name of every serving object
RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}  # two models during a swap
KINDS = ("Deployment", "Service", "PodDisruptionBudget", "Ingress")


def name(spec: PlatformSpec) -> str:
    return v.serving_name(spec)


def selector(spec: PlatformSpec) -> dict[str, str]:
    """The labels every serving object and pod carries: NOT the chart's ``release`` label, so neither the
    chart's readiness wait nor verify's release rows count pods that are legitimately unready (no model)."""
    return {"app.kubernetes.io/name": COMPONENT, "app.kubernetes.io/instance": spec.kubernetes.release}


def label_selector(spec: PlatformSpec) -> str:
    return ",".join(f"{k}={val}" for k, val in selector(spec).items())


def _meta(spec: PlatformSpec) -> dict[str, Any]:
    labels = {**selector(spec), "app.kubernetes.io/managed-by": "airflow-gitops", "component": "serving"}
    return {"name": name(spec), "namespace": spec.kubernetes.namespace, "labels": labels}


def env(spec: PlatformSpec) -> dict[str, str]:
    """The serving process's environment: what every Airflow pod gets, then serving's own settings."""
    out = v.runtime_env(spec)
    out.update(
        {
            **process_env(spec),
            "PYTHONPATH": SERVING_CODE_DIR,  # where the image keeps the serving package
            # The image's entrypoint would wait for Airflow's database first; serving never uses it.
            "CONNECTION_CHECK_MAX_COUNT": "0",
        }
    )
    return out


def deployment(spec: PlatformSpec, login_checksum: str | None = None) -> dict[str, Any]:
    aws_vol, aws_mount = v.aws_volume(spec)
    http = {"port": "http"}
    container: dict[str, Any] = {
        "name": "serving",
        "image": spec.image.ref,
        "imagePullPolicy": spec.image.pull_policy,
        # The image's entrypoint runs `python ...` as given (after its uid checks).
        "args": ["python", "-m", "airflow_gitops.serving", "0.0.0.0", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": k, "value": val} for k, val in env(spec).items()]
        + [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": spec.secrets.mlflow_secret, "key": key}}}
            for name, key in v.mlflow_login_env(spec)
        ],
        "volumeMounts": [aws_mount, {"name": "tmp", "mountPath": "/tmp"}],
        # Ready = a model is loaded (503 until then, and while nothing is registered).
        "readinessProbe": {
            "httpGet": {"path": "/health", **http},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        # Alive = the HTTP server answers, model or not: a platform without a model must not crash-loop.
        "startupProbe": {
            "httpGet": {"path": "/metrics", **http},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 90,
        },
        "livenessProbe": {
            "httpGet": {"path": "/metrics", **http},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": RESOURCES,
        "securityContext": dict(v.CONTAINER_SECURITY_CONTEXT),
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # it never talks to the API server
        # the chart's pods' context (uid 50000, group 0: the AWS files, 0440, are readable through it)
        "securityContext": dict(v.POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [aws_vol, {"name": "tmp", "emptyDir": {}}],
        "affinity": {  # the replicas on different nodes when there are several
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": selector(spec)},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        },
        **v.placement(spec),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec),
        "spec": {
            "replicas": spec.serving.replicas,
            "selector": {"matchLabels": selector(spec)},
            # Never fewer serving pods during a rollout; each new one is Ready once it loaded the model.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": _meta(spec)["labels"],
                    # a new MLflow password rolls them: they read it into their environment when they start
                    **({"annotations": {v.LOGIN_CHECKSUM: login_checksum}} if login_checksum else {}),
                },
                "spec": pod,
            },
        },
    }


def service(spec: PlatformSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(spec),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pdb(spec: PlatformSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": selector(spec)},
            # Pods that are not Ready (no model registered yet) never block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def ingress(spec: PlatformSpec) -> dict[str, Any]:
    s = spec.serving
    rule = {
        "host": s.ingress_host,
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": name(spec), "port": {"name": "http"}}},
                }
            ]
        },
    }
    body: dict[str, Any] = {"rules": [rule]}
    if spec.ingress.ingress_class:
        body["ingressClassName"] = spec.ingress.ingress_class
    if s.tls_secret:
        body["tls"] = [{"hosts": [s.ingress_host], "secretName": s.tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": _meta(spec), "spec": body}


def manifests(spec: PlatformSpec, login_checksum: str | None = None) -> list[dict[str, Any]]:
    """The serving objects platform.yaml asks for (none with ``serving.enabled: false``). A PDB only with
    two replicas or more: minAvailable 1 of 1 would block every node drain."""
    if not spec.serving.enabled:
        return []
    docs = [deployment(spec, login_checksum), service(spec)]
    if spec.serving.replicas >= 2:
        docs.append(pdb(spec))
    if spec.serving.ingress_host:
        docs.append(ingress(spec))
    return docs
