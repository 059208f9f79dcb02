"""Kubernetes manifests: the Secrets (key material, 0600 file) and the namespace + logs PVC.

Key material is generated once under the state directory's ``secrets/`` (see :mod:`..secrets`) and
reused on every render, so a redeploy never changes the Fernet key or the JWT secret.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from .. import contract, dburl, managed
from .. import keystore as keys
from ..contract import SecretKey
from ..errors import PlatformError
from ..spec import PlatformSpec
from . import values as v

MANAGED_BY = {"app.kubernetes.io/managed-by": "airflow-gitops"}


@dataclass
class SecretBundle:
    """The Secret manifests plus what may be shown (the deploy key's public half) and the known_hosts."""

    secrets: list[dict[str, Any]] = field(default_factory=list)
    deploy_public_key: str | None = None
    known_hosts: str | None = None
    warnings: list[str] = field(default_factory=list)
    # Pod annotation -> a fingerprint of the Secret it stands for, for each Secret pods read into their
    # environment (at start only): a changed Connection, Variable or MLflow login changes it and rolls them.
    checksums: dict[str, str] = field(default_factory=dict)

    def values(self) -> list[str]:
        """Every secret value (to prove none leaks)."""
        out = []
        for s in self.secrets:
            for key, val in s.get("stringData", {}).items():
                if key not in (SecretKey.KNOWN_HOSTS, SecretKey.GIT_CONNECTION):
                    out.append(val)
        return out


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
        files[SecretKey.AWS_CREDENTIALS] = _read(
            spec, "aws.credentials_file", aws.credentials_file, "an AWS credentials file"
        )
    else:
        warnings.append(
            "aws.credentials_file is not set: the AWS Secret holds no access keys, so pods need another "
            "credential source (IRSA / EKS Pod Identity); set aws.credentials_file to mount a credentials file"
        )
        files[SecretKey.AWS_CREDENTIALS] = f"[{aws.profile}]\n"
    files[SecretKey.AWS_CONFIG] = (
        _read(spec, "aws.config_file", aws.config_file, "an AWS config file")
        if aws.config_file
        else aws.config_file_text(aws.endpoint_url)
    )
    return files


def _read(spec: PlatformSpec, key: str, value, what: str) -> str:
    path = spec.path(value)
    if not path.is_file():
        raise PlatformError(f"{key} {path} not found", f"point it at {what}")
    return path.read_text(encoding="utf-8")


def read_known_hosts(spec: PlatformSpec) -> str | None:
    """The pinned known_hosts text, checked line by line (it goes into the chart values and a Secret)."""
    if not spec.dags.is_ssh:
        return None
    assert spec.dags.known_hosts_file
    path = spec.path(spec.dags.known_hosts_file)
    host, port = spec.dags.ssh_host_port()
    scan = f"run `ssh-keyscan -p {port} {host} > {path}` and verify the fingerprint against the Git host's docs"
    try:
        text = path.read_bytes().decode("utf-8") if path.is_file() else ""
    except UnicodeDecodeError:
        raise PlatformError(f"dags.known_hosts_file {path} is not text", scan) from None
    if not text.strip():
        raise PlatformError(f"dags.known_hosts_file {path} is missing or empty: the Git host key must be pinned", scan)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#") and not _known_hosts_line(line):
            raise PlatformError(
                f"dags.known_hosts_file {path} line {n} is not a known_hosts entry ('HOST KEYTYPE BASE64KEY')", scan
            )
    return text


def _known_hosts_line(line: str) -> bool:
    parts = line.split()
    if parts and parts[0].startswith("@"):  # @cert-authority / @revoked marker
        parts = parts[1:]
    if len(parts) < 3 or not parts[1].startswith(("ssh-", "ecdsa-", "sk-")):
        return False
    try:
        base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        return False
    return True


def deploy_key(spec: PlatformSpec) -> tuple[str, str] | None:
    """(private key, public line) of the SSH deploy key; generated at ``dags.ssh_key_file`` if absent."""
    if not spec.dags.is_ssh:
        return None
    assert spec.dags.ssh_key_file
    path = spec.path(spec.dags.ssh_key_file)
    public = keys.generate_deploy_key(path)
    return keys.read_private(path).decode("utf-8"), public


def fernet_secret(spec: PlatformSpec) -> dict[str, Any]:
    return _secret(spec, spec.secrets.fernet_key_secret, {SecretKey.FERNET: keys.fernet_key(spec)})


def build_secrets(spec: PlatformSpec) -> SecretBundle:
    """Every Secret of :func:`contract.secret_keys` with exactly the keys it names there (the one place
    that says which Secret holds which keys); this module only knows where each key's value comes from."""
    out = SecretBundle()
    url = spec.database.resolved_url()
    if url is None:
        raise PlatformError(
            "database.url is not set: on Kubernetes the chart's own PostgreSQL is off (postgresql.enabled: false)",
            "set database.url to your PostgreSQL, e.g. '${AIRFLOW_DB_URL}' with "
            "AIRFLOW_DB_URL=postgresql://USER:PASSWORD@HOST:5432/airflow in the environment",
        )
    value = _secret_values(spec, url, out)
    read_as_env = {
        spec.secrets.connections_secret: v.CONNECTIONS_CHECKSUM,
        spec.secrets.mlflow_secret: v.LOGIN_CHECKSUM,
    }
    for name, wanted in contract.secret_keys(spec).items():
        data = {key: value(name, key) for key in wanted}
        out.secrets.append(_secret(spec, name, data))
        if name in read_as_env:
            out.checksums[read_as_env[name]] = checksum(spec, data)
    return out


def _secret_values(spec: PlatformSpec, url: str, out: SecretBundle):
    """``value(secret name, key)``: the value of one key :func:`contract.secret_keys` names (each source
    read once; the deploy key's public half and the known_hosts go into ``out`` on the way)."""
    names = spec.secrets

    @functools.cache
    def aws() -> dict[str, str]:
        return _aws_files(spec, out.warnings)

    @functools.cache
    def config() -> dict[str, str]:
        return contract.secret_config_keys(spec)

    @functools.cache
    def resolved() -> managed.Declared:
        # Every ${VAR} and from_file read now, once.
        return managed.resolve(spec)

    def declared() -> dict[str, str]:
        # Each becomes AIRFLOW_CONN_* / AIRFLOW_VAR_* on every pod.
        return resolved().env()

    def mlflow_login() -> tuple[str, str]:
        login = resolved().mlflow_login
        assert login is not None  # the contract names the Secret only when mlflow.password is set
        return login

    def ssh_key() -> str:
        key = deploy_key(spec)
        assert key is not None  # the contract names the key only for an SSH repository
        out.deploy_public_key = key[1]
        return key[0]

    def known_hosts() -> str:
        out.known_hosts = read_known_hosts(spec)
        return out.known_hosts or ""

    fixed = {
        (names.fernet_key_secret, SecretKey.FERNET): lambda: keys.fernet_key(spec),
        (names.metadata_secret, SecretKey.METADATA): lambda: dburl.encoded(url),
        (names.api_secret_key_secret, SecretKey.API_SECRET): lambda: keys.api_secret_key(spec),
        (names.jwt_secret_secret, SecretKey.JWT): lambda: keys.jwt_secret(spec),
        (names.aws_secret, SecretKey.AWS_CREDENTIALS): lambda: aws()[SecretKey.AWS_CREDENTIALS],
        (names.aws_secret, SecretKey.AWS_CONFIG): lambda: aws()[SecretKey.AWS_CONFIG],
        (names.admin_password_secret, SecretKey.ADMIN_PASSWORD): lambda: keys.admin_password(spec),
        (names.git_ssh_secret, SecretKey.GIT_SSH_KEY): ssh_key,
        (names.git_ssh_secret, SecretKey.KNOWN_HOSTS): known_hosts,
        (names.git_ssh_secret, SecretKey.GIT_CONNECTION): lambda: v.git_connection(spec),
        (names.mlflow_secret, SecretKey.MLFLOW_USERNAME): lambda: mlflow_login()[0],
        (names.mlflow_secret, SecretKey.MLFLOW_PASSWORD): lambda: mlflow_login()[1],
    }
    # Secrets whose keys are named by what platform.yaml declares.
    by_name = {
        names.config_secret: lambda key: config()[key],
        names.connections_secret: lambda key: declared()[key],
    }

    def value(name: str, key: str) -> str:
        if (name, key) in fixed:
            return fixed[(name, key)]()
        if name in by_name:
            return by_name[name](key)
        raise LookupError(f"contract.secret_keys names key {key!r} of Secret {name!r}, which manifests cannot fill")

    return value


def checksum(spec: PlatformSpec, data: dict[str, str]) -> str:
    """A fingerprint of Secret data that reveals nothing about it: HMAC-SHA256 keyed with the platform's
    Fernet key (a plain hash of a short password could be reversed by guessing)."""
    digest = hmac.new(keys.fernet_key(spec).encode(), json.dumps(data, sort_keys=True).encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


# The namespace admits only pods of Pod Security's "restricted" profile (non-root, no privilege escalation,
# no capabilities, seccomp RuntimeDefault): every pod values.py and serving.py make is one of them.
POD_SECURITY = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}


def namespace_and_pvc(spec: PlatformSpec) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": spec.kubernetes.namespace, "labels": {**MANAGED_BY, **POD_SECURITY}},
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
