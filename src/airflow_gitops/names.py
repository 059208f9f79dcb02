"""Names the platform reserves, below ``spec`` (which refuses a user's key for any of them) and
``contract`` (which builds from them): the Airflow settings it sets itself, the Connection it pulls
the DAG repository with, and what a secret-looking name is.

This module imports nothing of the package:

    names -> spec -> contract -> local | kubernetes -> checks
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The Connection GitDagBundle pulls the DAG repository with (platform.yaml may not declare it).
GIT_CONN_ID = "airflow_gitops_dags"
# Airflow's admin user on every target (its password: keystore.ADMIN_PASSWORD, generated, 0600).
ADMIN_USER = "admin"
# The Connection (type aws) remote task logging reads and writes S3 with (logs.remote: s3).
LOGS_CONN_ID = "airflow_gitops_logs"
# The [logging] keys logs.remote decides (declared in SETTINGS below; contract.common_config sets them).
REMOTE_LOGGING_KEYS = ("remote_logging", "remote_base_log_folder", "remote_log_conn_id")


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
        # Remote task logging: set by logs.remote: s3. Without it airflow.config may set them (another
        # backend, e.g. GCS); with it, spec/checks.py refuses them there by name.
        *(Setting("logging", key, None) for key in REMOTE_LOGGING_KEYS),
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


def config_collisions(config: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(airflow.config.SECTION.KEY, message) for each user key the platform manages itself."""
    out = []
    for section, keys in config.items():
        for key in keys:
            s = SETTINGS.get((section, key))
            if s is not None and s.owner is not None:
                out.append((f"airflow.config.{section}.{key}", f"is managed by airflow-gitops; set {s.owner}"))
    return out
