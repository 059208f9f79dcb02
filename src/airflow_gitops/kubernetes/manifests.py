"""Kubernetes manifests: the Secrets (key material, 0600 file) and the namespace + logs PVC.

Key material is generated once under the state directory's ``secrets/`` (see :mod:`..secrets`) and
reused on every render, so a redeploy never changes the Fernet key or the JWT secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .. import secrets as keys
from ..errors import PlatformError
from ..spec import PlatformSpec
from . import values as v

DEPLOY_KEY_FILE = "deploy_key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "airflow-gitops"}


@dataclass
class SecretBundle:
    """The Secret manifests plus what may be shown (the deploy key's public half) and the known_hosts."""

    secrets: list[dict[str, Any]] = field(default_factory=list)
    deploy_public_key: str | None = None
    known_hosts: str | None = None
    warnings: list[str] = field(default_factory=list)

    def values(self) -> list[str]:
        """Every secret value (to prove none leaks)."""
        out = []
        for s in self.secrets:
            for key, val in s.get("stringData", {}).items():
                if key not in (v.KNOWN_HOSTS, v.GIT_CONNECTION):
                    out.append(val)
        return out


def metadata_connection(url: str) -> str:
    """``postgresql://USER:PASSWORD@HOST/DB`` with the password URL-encoded exactly once."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise PlatformError("database.url is not a URL", "use postgresql://USER:PASSWORD@HOST:5432/DB")
    if scheme == "postgres":
        scheme = "postgresql"  # SQLAlchemy 2 no longer accepts 'postgres://'
    # The host part never holds '@', the password may hold ':' or '/': split at the last '@'.
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return f"{scheme}://{rest}"
    user, colon, password = userinfo.partition(":")
    user = quote(unquote(user), safe="")
    if colon:
        return f"{scheme}://{user}:{quote(unquote(password), safe='')}@{hostpart}"
    return f"{scheme}://{user}@{hostpart}"


def _secret(spec: PlatformSpec, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": spec.kubernetes.namespace, "labels": dict(MANAGED_BY)},
        "type": "Opaque",
        "stringData": data,
    }


def _aws_files(spec: PlatformSpec, warnings: list[str]) -> dict[str, str]:
    aws = spec.aws
    files: dict[str, str] = {}
    if aws.credentials_file:
        path = spec.path(aws.credentials_file)
        if not path.is_file():
            raise PlatformError(f"aws.credentials_file {path} not found", "point it at an AWS credentials file")
        files["credentials"] = path.read_text(encoding="utf-8")
    else:
        warnings.append(
            "aws.credentials_file is not set: the AWS Secret holds no access keys, so pods need another "
            "credential source (IRSA / EKS Pod Identity); set aws.credentials_file to mount a credentials file"
        )
        files["credentials"] = f"[{aws.profile}]\n"
    if aws.config_file:
        path = spec.path(aws.config_file)
        if not path.is_file():
            raise PlatformError(f"aws.config_file {path} not found", "point it at an AWS config file")
        files["config"] = path.read_text(encoding="utf-8")
    else:
        files["config"] = aws.config_file_text(aws.endpoint_url)
    return files


def read_known_hosts(spec: PlatformSpec) -> str | None:
    if not spec.dags.is_ssh:
        return None
    assert spec.dags.known_hosts_file
    path = spec.path(spec.dags.known_hosts_file)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        host, port = spec.dags.ssh_host_port()
        raise PlatformError(
            f"dags.known_hosts_file {path} is missing or empty: the Git host key must be pinned",
            f"run `ssh-keyscan -p {port} {host} > {path}` and verify the fingerprint against the Git host's docs",
        )
    return path.read_text(encoding="utf-8")


def deploy_key(spec: PlatformSpec) -> tuple[str, str] | None:
    """(private key, public line) of the SSH deploy key; generated at ``dags.ssh_key_file`` if absent."""
    if not spec.dags.is_ssh:
        return None
    assert spec.dags.ssh_key_file
    path = spec.path(spec.dags.ssh_key_file)
    public = keys.generate_deploy_key(path)
    return path.read_text(encoding="utf-8"), public


def build_secrets(spec: PlatformSpec) -> SecretBundle:
    out = SecretBundle()
    names = spec.secrets
    url = spec.database.resolved_url()
    if url is None:
        raise PlatformError(
            "database.url is not set: on Kubernetes the chart's own PostgreSQL is off (postgresql.enabled: false)",
            "set database.url to your PostgreSQL, e.g. '${AIRFLOW_DB_URL}' with "
            "AIRFLOW_DB_URL=postgresql://USER:PASSWORD@HOST:5432/airflow in the environment",
        )
    out.secrets.append(_secret(spec, names.fernet_key_secret, {v.FERNET_KEY: keys.fernet_key(spec)}))
    out.secrets.append(_secret(spec, names.metadata_secret, {v.METADATA_KEY: metadata_connection(url)}))
    out.secrets.append(_secret(spec, names.api_secret_key_secret, {v.API_SECRET_KEY: keys.api_secret_key(spec)}))
    out.secrets.append(_secret(spec, names.jwt_secret_secret, {v.JWT_SECRET: keys.jwt_secret(spec)}))
    out.secrets.append(_secret(spec, names.aws_secret, _aws_files(spec, out.warnings)))

    git: dict[str, str] = {}
    key = deploy_key(spec)
    if key:
        git[v.GIT_SSH_KEY] = key[0]
        out.deploy_public_key = key[1]
        out.known_hosts = read_known_hosts(spec)
        git[v.KNOWN_HOSTS] = out.known_hosts or ""
    if spec.dags.delivery == "bundle":
        git[v.GIT_CONNECTION] = v.git_connection(spec)
    if git:
        out.secrets.append(_secret(spec, names.git_ssh_secret, git))
    return out


def namespace_and_pvc(spec: PlatformSpec) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": spec.kubernetes.namespace, "labels": dict(MANAGED_BY)},
        }
    ]
    if spec.logs.persistence:
        pvc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": spec.logs.existing_claim,
                "namespace": spec.kubernetes.namespace,
                "labels": dict(MANAGED_BY),
            },
            "spec": {
                # Every pod (scheduler, api-server, each task pod) writes and reads task logs.
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": spec.logs.size}},
            },
        }
        if spec.logs.storage_class:
            pvc["spec"]["storageClassName"] = spec.logs.storage_class
        docs.append(pvc)
    return docs


def deploy_key_path(spec: PlatformSpec) -> Path | None:
    return spec.path(spec.dags.ssh_key_file) if spec.dags.ssh_key_file else None
