"""``PlatformSpec`` -> ``values.yaml`` for the official Apache Airflow Helm chart (1.21, Airflow 3).

The seed's values, corrected where the chart would silently do something else:

* git-sync: ``ref`` (git-sync v4). The chart also always passes the deprecated ``branch``/``rev``
  (defaults ``v2-2-stable``/``HEAD``) and git-sync lets them override ``ref``, so they are set to the
  same ref. ``knownHosts`` is always set for SSH: without it the chart turns host key checking off.
* the AWS credentials Secret goes to *every* Airflow pod through the chart's top-level
  ``volumes``/``volumeMounts`` (scheduler, dag-processor, triggerer, api-server, KubernetesExecutor
  worker pod template), not ``scheduler.extraVolumes`` alone.
* Fernet key, API secret key and JWT secret come from Secrets we render (stable across redeploys).

No key material ever goes into the values: only Secret *names*.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import PlatformError
from ..local.layout import BUNDLE_NAME, GIT_CONN_ID
from ..spec import PlatformSpec
from .image import airflow_version

AWS_MOUNT = "/home/airflow/.aws"
GIT_SSH_MOUNT = "/opt/airflow/git-ssh"
AWS_VOLUME = "aws-credentials"
GIT_SSH_VOLUME = "git-ssh"
GIT_BUNDLE_CLASS = "airflow.providers.git.bundles.git.GitDagBundle"
MLFLOW_PLACEHOLDER = "http://mlflow.mlflow.svc.cluster.local:5000"
# Secret keys the chart expects.
FERNET_KEY = "fernet-key"
API_SECRET_KEY = "api-secret-key"
JWT_SECRET = "jwt-secret"
METADATA_KEY = "connection"
GIT_SSH_KEY = "gitSshKey"
KNOWN_HOSTS = "known_hosts"
GIT_CONNECTION = "connection"


def conn_env_name(conn_id: str = GIT_CONN_ID) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def require_repo(spec: PlatformSpec) -> str:
    repo = spec.dags.repo
    if not repo or repo.startswith("/") or repo.startswith("file://"):
        raise PlatformError(
            "dags.repo is not set to a remote Git URL: pods in the cluster cannot read a repository on this machine",
            "set dags.repo in platform.yaml to the DAG repository, e.g. 'git@github.com:org/airflow-dags.git' "
            "(with dags.ssh_key_file and dags.known_hosts_file) or an https URL",
        )
    return repo


def runtime_env(spec: PlatformSpec, warnings: list[str] | None = None) -> dict[str, str]:
    """What DAG code sees on every pod: ``dag_runtime_env()`` minus the ``AWS_*_FILE`` variables."""
    uri = spec.mlflow.tracking_uri
    if uri is None:
        uri = MLFLOW_PLACEHOLDER
        if warnings is not None:
            warnings.append(
                f"mlflow.tracking_uri is not set: MLFLOW_TRACKING_URI is the placeholder {uri}; "
                "set mlflow.tracking_uri to your MLflow server's in-cluster URL"
            )
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": spec.mlflow.experiment,
        "MLOPS_REGISTERED_MODEL": spec.mlflow.registered_model,
        "MLOPS_DATA_BUCKET": spec.aws.bucket,
        "AWS_PROFILE": spec.aws.profile,
        "AWS_DEFAULT_REGION": spec.aws.region,
    }
    if spec.aws.endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.aws.endpoint_url
    return env


def _cfg(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "True" if value else "False"
    return value


def bundle_config(spec: PlatformSpec) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "git_conn_id": GIT_CONN_ID,
        "tracking_ref": spec.dags.branch,
        "refresh_interval": spec.dags.sync_interval,
    }
    if spec.dags.sub_path not in ("", "."):
        kwargs["subdir"] = spec.dags.sub_path
    return [{"name": BUNDLE_NAME, "classpath": GIT_BUNDLE_CLASS, "kwargs": kwargs}]


def build_values(
    spec: PlatformSpec,
    *,
    known_hosts: str | None = None,
    chart_defaults: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The chart values. ``known_hosts`` is the pinned known_hosts text (public, not a secret).

    ``chart_defaults`` (the chart's own ``values.yaml``) lets an older chart without
    ``dagProcessor.dagBundleConfigList`` get the bundle list as plain Airflow config instead.
    """
    warnings = warnings if warnings is not None else []
    repo = require_repo(spec)
    names = spec.secrets
    version = airflow_version()
    ssh = spec.dags.is_ssh

    config: dict[str, dict[str, Any]] = {
        "core": {
            "load_examples": _cfg(spec.airflow.load_examples),
            "dags_are_paused_at_creation": _cfg(spec.airflow.dags_are_paused_at_creation),
        }
    }
    for section, keys in spec.airflow.config.items():
        config.setdefault(section, {}).update({k: _cfg(v) for k, v in keys.items()})

    volumes: list[dict[str, Any]] = [
        {"name": AWS_VOLUME, "secret": {"secretName": names.aws_secret, "defaultMode": 0o440}},
    ]
    mounts: list[dict[str, Any]] = [{"name": AWS_VOLUME, "mountPath": AWS_MOUNT, "readOnly": True}]

    values: dict[str, Any] = {
        "executor": spec.airflow.executor,
        "airflowVersion": version,
        "defaultAirflowTag": version,
        "images": {
            "airflow": {
                "repository": spec.image.repository,
                "tag": spec.image.tag,
                "pullPolicy": spec.image.pull_policy,
            }
        },
        "fernetKeySecretName": names.fernet_key_secret,
        "apiSecretKeySecretName": names.api_secret_key_secret,
        "jwtSecretName": names.jwt_secret_secret,
        "postgresql": {"enabled": False},
        "data": {"metadataSecretName": names.metadata_secret},
        "env": [{"name": k, "value": v} for k, v in runtime_env(spec, warnings).items()],
        "volumes": volumes,
        "volumeMounts": mounts,
        "config": config,
        "logs": {
            "persistence": (
                {"enabled": True, "existingClaim": spec.logs.existing_claim}
                if spec.logs.persistence
                else {"enabled": False}
            )
        },
    }
    if spec.airflow.executor == "CeleryExecutor":
        values["redis"] = {"enabled": True}

    if spec.ingress.enabled:
        host: dict[str, Any] = {"name": spec.ingress.host}
        if spec.ingress.tls_secret:
            host["tls"] = {"enabled": True, "secretName": spec.ingress.tls_secret}
        api_ingress: dict[str, Any] = {"enabled": True, "path": "/", "pathType": "Prefix", "hosts": [host]}
        if spec.ingress.ingress_class:
            api_ingress["ingressClassName"] = spec.ingress.ingress_class
        values["ingress"] = {"apiServer": api_ingress}

    if spec.dags.delivery == "git-sync":
        ref = spec.dags.branch
        git_sync: dict[str, Any] = {
            "enabled": True,
            "repo": repo,
            "ref": ref,
            # Deprecated, but the chart always sets them and they override `ref`: make them agree.
            "branch": ref,
            "rev": "HEAD",
            "subPath": "" if spec.dags.sub_path == "." else spec.dags.sub_path,
            "depth": spec.dags.depth,
            "period": f"{spec.dags.sync_interval}s",
        }
        if ssh:
            if not known_hosts:
                raise PlatformError(
                    "git-sync over SSH needs the Git host's key pinned; without it the chart turns host key "
                    "checking off",
                    "set dags.known_hosts_file (ssh-keyscan -p PORT HOST > known_hosts, verify the fingerprint)",
                )
            git_sync["sshKeySecret"] = names.git_ssh_secret
            git_sync["knownHosts"] = known_hosts.strip() + "\n"
        values["dags"] = {"gitSync": git_sync}
    else:
        values["dags"] = {"gitSync": {"enabled": False}}
        bundles = bundle_config(spec)
        if chart_defaults is not None and "dagBundleConfigList" not in (chart_defaults.get("dagProcessor") or {}):
            config.setdefault("dag_processor", {})["dag_bundle_config_list"] = json.dumps(bundles)
            warnings.append("this chart has no dagProcessor.dagBundleConfigList; the bundle list is set as config")
        else:
            values["dagProcessor"] = {"dagBundleConfigList": bundles}
        # The git connection (repo URL, key file path, known_hosts path: no key material) comes from the
        # git Secret as AIRFLOW_CONN_*; the key and known_hosts are mounted from the same Secret.
        values["secret"] = [
            {"envName": conn_env_name(), "secretName": names.git_ssh_secret, "secretKey": GIT_CONNECTION}
        ]
        if ssh:
            volumes.append(
                {"name": GIT_SSH_VOLUME, "secret": {"secretName": names.git_ssh_secret, "defaultMode": 0o440}}
            )
            mounts.append({"name": GIT_SSH_VOLUME, "mountPath": GIT_SSH_MOUNT, "readOnly": True})
    return values


def git_connection(spec: PlatformSpec) -> str:
    """The ``AIRFLOW_CONN_*`` JSON for GitDagBundle: SSH key and known_hosts are files from the Secret."""
    extra: dict[str, Any] = {}
    if spec.dags.is_ssh:
        extra = {
            "key_file": f"{GIT_SSH_MOUNT}/{GIT_SSH_KEY}",
            "known_hosts_file": f"{GIT_SSH_MOUNT}/{KNOWN_HOSTS}",
            "strict_host_key_checking": "yes",
        }
    return json.dumps({"conn_type": "git", "host": require_repo(spec), "extra": extra})
