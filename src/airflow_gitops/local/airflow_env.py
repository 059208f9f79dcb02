"""Airflow's configuration for the local target, as environment variables.

Environment variables (not an ``airflow.cfg``) so that one dict serves supervisor's programs, the
one-off ``airflow db migrate`` and a user's own ``airflow`` commands (``airflow-gitops env``), and so
that secrets never land in a config file users might commit. supervisor's config holding them is 0600.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import secrets
from .layout import BUNDLE_NAME, GIT_CONN_ID, HOST, Layout, dag_runtime_env

ADMIN_USER = "admin"


def git_connection(layout: Layout) -> dict:
    """The Airflow git connection GitDagBundle pulls with (SSH: deploy key + pinned known_hosts)."""
    dags = layout.spec.dags
    extra: dict[str, str] = {}
    if dags.is_ssh:
        extra = {
            "key_file": str(layout.spec.path(dags.ssh_key_file)),
            "known_hosts_file": str(layout.spec.path(dags.known_hosts_file)),
            # Never "accept-new": a host key we have not pinned is an attack, not a first visit.
            "strict_host_key_checking": "yes",
        }
    return {"conn_type": "git", "host": layout.spec.dag_repo_url, "extra": extra}


def bundle_config(layout: Layout) -> list[dict]:
    dags = layout.spec.dags
    kwargs = {
        "git_conn_id": GIT_CONN_ID,
        "tracking_ref": dags.branch,
        "refresh_interval": dags.sync_interval,
    }
    if dags.sub_path not in ("", "."):
        kwargs["subdir"] = dags.sub_path
    return [{"name": BUNDLE_NAME, "classpath": "airflow.providers.git.bundles.git.GitDagBundle", "kwargs": kwargs}]


def passwords_file(layout: Layout) -> Path:
    """SimpleAuthManager's password file, written from our stable admin password (0600)."""
    path = layout.secrets / "simple_auth_manager_passwords.json"
    wanted = json.dumps({ADMIN_USER: secrets.admin_password(layout.spec)})
    if not path.exists() or path.read_text() != wanted:
        secrets.write_private(path, wanted)
    return path


def airflow_env(layout: Layout, database_url: str) -> dict[str, str]:
    spec = layout.spec
    ports = layout.ports
    env = {
        "AIRFLOW_HOME": str(layout.airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__FERNET_KEY": secrets.fernet_key(spec),
        "AIRFLOW__CORE__LOAD_EXAMPLES": str(spec.airflow.load_examples),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(spec.airflow.dags_are_paused_at_creation),
        "AIRFLOW__CORE__PARALLELISM": str(spec.local.parallelism),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{ports.api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(layout)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(ports.api),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{ports.api}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.api_secret_key(spec),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.jwt_secret(spec),
        "AIRFLOW__API_AUTH__JWT_ISSUER": "airflow-gitops",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundle_config(layout)),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(layout.bundles),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(spec.dags.sync_interval),
        # How often the processor looks whether a bundle is due: 1 s keeps push-to-live near the interval.
        "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(layout.task_logs),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__TRIGGERER__CAPACITY": "100",
        f"AIRFLOW_CONN_{GIT_CONN_ID.upper()}": json.dumps(git_connection(layout)),
        "GIT_TERMINAL_PROMPT": "0",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    }
    for section, keys in spec.airflow.config.items():
        for key, value in keys.items():
            env[f"AIRFLOW__{section.upper().replace('.', '_')}__{key.upper()}"] = str(value)
    env.update(dag_runtime_env(layout))
    return env
