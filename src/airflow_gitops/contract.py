"""What Airflow and DAG code see on ANY target, each fact named once.

Both targets build from these: the local target turns them into environment variables for its
processes, the Kubernetes target into chart values and Secrets. The DAG repository template relies on
:func:`dag_runtime_env`; doctor and verify check the Secrets of :func:`secret_keys`.

This module imports nothing of the package at run time (``spec`` validates ``airflow.config`` against
:data:`SETTINGS`), so it sits below everything else:

    platform.yaml -> spec -> (contract) -> local | kubernetes -> checks
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import PlatformSpec

# --- DAG delivery -------------------------------------------------------------------------------------
BUNDLE_NAME = "dags"
GIT_CONN_ID = "airflow_gitops_dags"
GIT_BUNDLE_CLASS = "airflow.providers.git.bundles.git.GitDagBundle"
# `verify --probe` measures push-to-live on this bundle and branch of the local repository, never on
# dags.branch: it holds no DAGs, only the probe's marker commits (each removed again after the probe).
PROBE_BUNDLE = "airflow-gitops-probe"
PROBE_BRANCH = "airflow-gitops/probe"


def conn_env_name(conn_id: str) -> str:
    """The environment variable Airflow reads a Connection from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def var_env_name(key: str) -> str:
    """The environment variable Airflow reads a Variable from."""
    return f"AIRFLOW_VAR_{key.upper()}"


def declared_env_names(spec: PlatformSpec) -> list[str]:
    """``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` of the Connections and Variables platform.yaml declares
    (on Kubernetes: the keys of the Secret ``secrets.connections_secret``)."""
    return sorted(
        [conn_env_name(c) for c in spec.connections] + [var_env_name(v) for v in spec.variables],
    )


def bundle_config(spec: PlatformSpec, *, probe: bool = False) -> list[dict[str, Any]]:
    """``[dag_processor] dag_bundle_config_list``: one GitDagBundle on ``dags.repo`` / ``dags.branch``
    (and, with ``probe``, the probe bundle: the same repository and refresh, the probe branch)."""
    kwargs: dict[str, Any] = {
        "git_conn_id": GIT_CONN_ID,
        "tracking_ref": spec.dags.branch,
        "refresh_interval": spec.dags.sync_interval,
    }
    if spec.dags.sub_path not in ("", "."):
        kwargs["subdir"] = spec.dags.sub_path
    bundles = [{"name": BUNDLE_NAME, "classpath": GIT_BUNDLE_CLASS, "kwargs": kwargs}]
    if probe:
        probe_kwargs = {**kwargs, "tracking_ref": PROBE_BRANCH}
        probe_kwargs.pop("subdir", None)
        bundles.append({"name": PROBE_BUNDLE, "classpath": GIT_BUNDLE_CLASS, "kwargs": probe_kwargs})
    return bundles


def git_connection(spec: PlatformSpec, *, key_file: str | None = None, known_hosts_file: str | None = None) -> str:
    """The git Connection GitDagBundle pulls with, as ``AIRFLOW_CONN_*`` JSON (paths only, no key material).

    SSH: the deploy key and the pinned known_hosts, strictly checked. Never "accept-new": a host key
    we have not pinned is an attack, not a first visit.
    """
    extra: dict[str, str] = {}
    if spec.dags.is_ssh:
        extra = {
            "key_file": key_file or "",
            "known_hosts_file": known_hosts_file or "",
            "strict_host_key_checking": "yes",
        }
    return json.dumps({"conn_type": "git", "host": spec.dag_repo_url, "extra": extra})


# --- what DAG code sees ------------------------------------------------------------------------------
# Where DAG code reaches the serving component (set only when serving is on).
SERVING_URL_ENV = "MLOPS_SERVING_URL"


def dag_runtime_env(
    spec: PlatformSpec,
    *,
    mlflow_uri: str,
    s3_endpoint: str | None,
    aws_files: tuple[str, str] | None = None,
    s3_only_endpoint: bool = False,
    serving_url: str | None = None,
) -> dict[str, str]:
    """The environment every task gets on every target (the DAG repository template relies on it).

    ``aws_files`` (credentials, config) are given where the files are not at boto3's default place;
    on Kubernetes they are mounted at ``/home/airflow/.aws`` (the seed's path) instead. An endpoint
    that serves S3 only (the local one: no STS) is named for S3 alone, also for pyarrow's AWS SDK,
    which ignores ``endpoint_url`` in the config file.
    """
    env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLFLOW_EXPERIMENT_NAME": spec.mlflow.experiment,
        "MLOPS_REGISTERED_MODEL": spec.mlflow.registered_model,
        "MLOPS_DATA_BUCKET": spec.aws.bucket,
        "AWS_PROFILE": spec.aws.profile,
        "AWS_DEFAULT_REGION": spec.aws.region,
    }
    if aws_files:
        env["AWS_SHARED_CREDENTIALS_FILE"], env["AWS_CONFIG_FILE"] = aws_files
    if serving_url:
        env[SERVING_URL_ENV] = serving_url  # the template pipeline waits there for its new champion
    if s3_endpoint and s3_only_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    elif s3_endpoint and not aws_files:
        env["AWS_ENDPOINT_URL"] = s3_endpoint
    return env


# --- Secrets (Kubernetes) and the keys in them -------------------------------------------------------
class SecretKey:
    """Key names inside the Secrets, as the official chart (and git-sync) read them."""

    FERNET = "fernet-key"
    API_SECRET = "api-secret-key"
    JWT = "jwt-secret"
    METADATA = "connection"
    GIT_SSH_KEY = "gitSshKey"
    KNOWN_HOSTS = "known_hosts"
    GIT_CONNECTION = "connection"
    AWS_CREDENTIALS = "credentials"
    AWS_CONFIG = "config"
    ADMIN_PASSWORD = "password"
    # The connections Secret holds one key per declared Connection/Variable, named like its env var.


def secret_keys(spec: PlatformSpec) -> dict[str, list[str]]:
    """Every Secret the platform needs on Kubernetes -> the keys it must hold."""
    names = spec.secrets
    out = {
        names.fernet_key_secret: [SecretKey.FERNET],
        names.metadata_secret: [SecretKey.METADATA],
        names.api_secret_key_secret: [SecretKey.API_SECRET],
        names.jwt_secret_secret: [SecretKey.JWT],
        names.aws_secret: [SecretKey.AWS_CREDENTIALS, SecretKey.AWS_CONFIG],
        names.admin_password_secret: [SecretKey.ADMIN_PASSWORD],
    }
    if secret_config_keys(spec):
        out[names.config_secret] = sorted(secret_config_keys(spec))
    if declared_env_names(spec):
        out[names.connections_secret] = declared_env_names(spec)
    git: list[str] = []
    if spec.dags.is_ssh:
        git += [SecretKey.GIT_SSH_KEY, SecretKey.KNOWN_HOSTS]
    if spec.dags.delivery == "bundle":
        git.append(SecretKey.GIT_CONNECTION)
    if git:
        out[names.git_ssh_secret] = git
    return out


# --- Airflow configuration the platform sets ---------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One ``[section] key`` the platform sets. ``owner`` is the platform.yaml key that decides it
    (an ``airflow.config`` entry for it is an error naming ``owner``); ``owner=None`` marks a tuned
    default that ``airflow.config`` may override."""

    section: str
    key: str
    owner: str | None

    @property
    def env(self) -> str:
        return f"AIRFLOW__{self.section.upper().replace('.', '_')}__{self.key.upper()}"


_GENERATED = "nothing: generated once into STATE_DIR/secrets/ (a Secret on Kubernetes)"
_DERIVED = "nothing: derived from local.ports / the target"
SETTINGS: dict[tuple[str, str], Setting] = {
    (s.section, s.key): s
    for s in (
        Setting("core", "executor", "airflow.executor (the local target always runs LocalExecutor)"),
        Setting("core", "fernet_key", _GENERATED),
        Setting("core", "load_examples", "airflow.load_examples"),
        Setting("core", "dags_are_paused_at_creation", "airflow.dags_are_paused_at_creation"),
        Setting("core", "parallelism", "local.parallelism"),
        Setting("core", "execution_api_server_url", _DERIVED),
        Setting("core", "simple_auth_manager_users", "nothing: the admin login is generated"),
        Setting("core", "simple_auth_manager_passwords_file", _GENERATED),
        Setting("database", "sql_alchemy_conn", "database.url"),
        Setting("api", "host", _DERIVED),
        Setting("api", "port", "local.ports.api"),
        Setting("api", "base_url", _DERIVED),
        Setting("api", "secret_key", _GENERATED),
        Setting("api_auth", "jwt_secret", _GENERATED),
        Setting("api_auth", "jwt_issuer", _DERIVED),
        Setting("dag_processor", "dag_bundle_config_list", "dags.* (repo, branch, sub_path, sync_interval)"),
        Setting("dag_processor", "dag_bundle_storage_path", "local.state_dir"),
        Setting("dag_processor", "refresh_interval", "dags.sync_interval"),
        Setting("logging", "base_log_folder", "local.state_dir"),
        # Tuned defaults (docs/performance.md); airflow.config may override them.
        Setting("api", "workers", None),
        Setting("dag_processor", "bundle_refresh_check_interval", None),
        Setting("dag_processor", "parsing_processes", None),
        Setting("database", "check_migrations", None),
        Setting("scheduler", "enable_health_check", None),
        Setting("triggerer", "capacity", None),
        # Crash recovery (docs/recovery.md): a killed component's work resumes within a minute.
        Setting("scheduler", "orphaned_tasks_check_interval", None),
        Setting("scheduler", "scheduler_health_check_threshold", None),
        Setting("scheduler", "task_instance_heartbeat_timeout", None),
        Setting("scheduler", "task_instance_heartbeat_timeout_detection_interval", None),
        Setting("triggerer", "triggerer_health_check_threshold", None),
        Setting("workers", "execution_api_retries", None),
        Setting("workers", "execution_api_retry_wait_max", None),
    )
}


# An airflow.config key whose name says it holds a secret never goes into chart values (0644, in the
# Helm release): on Kubernetes it becomes AIRFLOW__SECTION__KEY from a Secret.
SECRET_WORDS = ("password", "secret", "token", "passwd", "credential", "private_key", "api_key")
# A Connection extra key or a Variable name that says its value is a secret (SECRET_WORDS, what Airflow's
# own secrets masker hides, and any name ending in "key": account_key, sas_key, ...): platform.yaml
# must give such a value by reference (${VAR} or {from_file: PATH}), never inline.
SECRET_NAME_WORDS = (
    *SECRET_WORDS,
    "passphrase",
    "apikey",
    "access_key",
    "keyfile",
    "service_account",
    "authorization",
    "bearer",
    "connection_string",
    "webhook_url",
)


def looks_secret(name: str) -> bool:
    """Does a Connection extra key or a Variable name say that its value is a secret?"""
    normalized = re.sub(r"\W+", "_", name.strip().lower())
    return any(w in normalized for w in SECRET_NAME_WORDS) or normalized == "key" or normalized.endswith("_key")


def secret_config_keys(spec: PlatformSpec) -> dict[str, str]:
    """``AIRFLOW__SECTION__KEY`` -> value for every ``airflow.config`` entry that looks like a secret."""
    return {
        Setting(section, key, None).env: _cfg(value)
        for section, keys in spec.airflow.config.items()
        for key, value in keys.items()
        if any(word in key for word in SECRET_WORDS)
    }


def config_collisions(config: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(airflow.config.SECTION.KEY, message) for each user key the platform manages itself."""
    out = []
    for section, keys in config.items():
        for key in keys:
            s = SETTINGS.get((section, key))
            if s is not None and s.owner is not None:
                out.append((f"airflow.config.{section}.{key}", f"is managed by airflow-gitops; set {s.owner}"))
    return out


def user_config(spec: PlatformSpec) -> dict[tuple[str, str], str]:
    """``airflow.config`` as ``{(section, key): str}`` (only tuned defaults and free keys reach here)."""
    return {(section, key): _cfg(value) for section, keys in spec.airflow.config.items() for key, value in keys.items()}


def _cfg(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def common_config(spec: PlatformSpec) -> dict[tuple[str, str], str]:
    """Settings with the same value on every target."""
    return {
        ("core", "load_examples"): _cfg(spec.airflow.load_examples),
        ("core", "dags_are_paused_at_creation"): _cfg(spec.airflow.dags_are_paused_at_creation),
    }
