"""Airflow's configuration for the local target, as environment variables.

Environment variables (not an ``airflow.cfg``) so that one dict serves supervisor's programs and the
one-off ``airflow db migrate``, and so that secrets never land in a config file users might commit.
Every ``[section] key`` set here is declared in :data:`..names.SETTINGS` (a test holds it so),
which is also what makes a colliding ``airflow.config`` key an error.
"""

from __future__ import annotations

import configparser
import io
import json
from pathlib import Path

from .. import contract, keystore, names
from ..names import (
    ADMIN_USER,
    GIT_CONN_ID,
)
from . import preload
from .launch_plan import ENV_VAR as LAUNCH_PLAN_ENV_VAR
from .launch_plan import LaunchPlan
from .layout import HOST, Layout, dag_runtime_env


def git_connection(layout: Layout) -> str:
    """The git Connection GitDagBundle pulls with (SSH: deploy key + pinned known_hosts files)."""
    dags, spec = layout.spec.dags, layout.spec
    if not dags.is_ssh:
        return contract.git_connection(spec)
    return contract.git_connection(
        spec, key_file=str(spec.path(dags.ssh_key_file)), known_hosts_file=str(spec.path(dags.known_hosts_file))
    )


def passwords_file(layout: Layout) -> Path:
    """SimpleAuthManager's password file, written from our stable admin password (0600)."""
    path = layout.secrets / "simple_auth_manager_passwords.json"
    wanted = json.dumps({ADMIN_USER: keystore.admin_password(layout.spec)})
    if not path.exists() or keystore.read_private(path).decode() != wanted:
        keystore.write_private(path, wanted)
    return path


def airflow_config(layout: Layout, database_url: str) -> dict[tuple[str, str], str]:
    """Every ``[section] key`` the local target sets, tuned defaults first, then ``airflow.config``."""
    spec, ports = layout.spec, layout.ports
    api = layout.api_url
    config = {
        # Tuned defaults (airflow.config may override them; docs/performance.md says why each).
        ("api", "workers"): "1",
        # How often the processor looks whether a bundle is due: 1 s keeps push-to-live near the interval.
        ("dag_processor", "bundle_refresh_check_interval"): "1",
        # Airflow's default, kept: a push of 58 files is listed in 10.1 s with 2, 13.4 s with 1 (bench).
        ("dag_processor", "parsing_processes"): "2",
        ("scheduler", "enable_health_check"): "False",
        # `up` migrates the database before any component may use it (launch.py waits for that), so the
        # components skip the check Airflow's CLI runs at each start: loading its 125 alembic revision
        # files costs ~1 CPU-s in every component, all at once during `up` (Airflow documents this
        # setting for deployments that "assert the correct version through other means").
        ("database", "check_migrations"): "False",
        ("triggerer", "capacity"): "100",
        # Crash recovery (docs/recovery.md says why each value and what it costs).
        ("scheduler", "orphaned_tasks_check_interval"): "10",
        ("scheduler", "scheduler_health_check_threshold"): "15",
        ("scheduler", "task_instance_heartbeat_timeout"): "120",
        ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): "5",
        ("triggerer", "triggerer_health_check_threshold"): "15",
        ("workers", "execution_api_retries"): "20",
        ("workers", "execution_api_retry_wait_max"): "10",
        **contract.user_config(spec),
        # Managed: decided by platform.yaml keys (collisions were refused when the spec was read).
        **contract.common_config(spec),
        ("core", "executor"): "LocalExecutor",
        ("core", "fernet_key"): keystore.fernet_key(spec),
        ("core", "parallelism"): str(spec.local.parallelism),
        ("core", "execution_api_server_url"): f"{api}/execution/",
        ("core", "simple_auth_manager_users"): f"{ADMIN_USER}:admin",
        ("core", "simple_auth_manager_passwords_file"): str(passwords_file(layout)),
        ("database", "sql_alchemy_conn"): database_url,
        ("api", "host"): HOST,
        ("api", "port"): str(ports.api),
        ("api", "base_url"): api,
        ("api", "secret_key"): keystore.api_secret_key(spec),
        ("api_auth", "jwt_secret"): keystore.jwt_secret(spec),
        ("api_auth", "jwt_issuer"): "airflow-gitops",
        # The local repository also carries the probe branch `verify --probe` measures push-to-live on.
        ("dag_processor", "dag_bundle_config_list"): json.dumps(
            contract.bundle_config(spec, probe=spec.dags.repo is None)
        ),
        ("dag_processor", "dag_bundle_storage_path"): str(layout.bundles),
        ("logging", "base_log_folder"): str(layout.task_logs),
    }
    return config


# Given to Airflow in AIRFLOW_HOME/airflow.cfg (0600), read once when a process starts, so that the
# values are in no process's environment: not the components', and so not the task processes
# LocalExecutor forks from them. (Airflow's ``_CMD`` variants were measured first: they run the
# command on every read, and the API server reads the JWT secret per request: 36 s per task start
# on a loaded 2-core machine.)
SECRET_SETTINGS = {
    ("core", "fernet_key"),
    ("database", "sql_alchemy_conn"),
    ("api", "secret_key"),
    ("api_auth", "jwt_secret"),
}


def config_file(layout: Layout) -> Path:
    return layout.airflow_home / "airflow.cfg"


def airflow_env(layout: Layout, database_url: str) -> dict[str, str]:
    """The environment of every Airflow process; the secret settings go into ``config_file`` (0600)."""
    env, secret = {}, configparser.ConfigParser(interpolation=None)
    for (section, key), value in airflow_config(layout, database_url).items():
        declared = names.SETTINGS.get((section, key)) or names.Setting(section, key, None)
        if (section, key) in SECRET_SETTINGS:
            if not secret.has_section(section):
                secret.add_section(section)
            secret.set(section, key, value.replace("%", "%%"))  # Airflow interpolates '%'
        else:
            env[declared.env] = value
    buf = io.StringIO()
    secret.write(buf)
    keystore.write_private(config_file(layout), buf.getvalue())
    env.update(
        {
            contract.conn_env_name(GIT_CONN_ID): git_connection(layout),
            # logs.remote: s3 - the Connection task logs go to S3 with (this target's endpoint; no secret in it).
            **contract.logs_connection(layout.spec, s3_endpoint=layout.s3_url),
            "AIRFLOW_HOME": str(layout.airflow_home),
            "GIT_TERMINAL_PROMPT": "0",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
    )
    env.update(write_launch_plan(layout))
    env.update(dag_runtime_env(layout))
    return env


def task_env(layout: Layout, env: dict[str, str]) -> dict[str, str]:
    """The environment of the task user's zygote (and so of every task and parse process): the Airflow
    processes' ``env`` without what only the platform's own components use (the launch plan, the git
    Connection naming the deploy key, the admin password file), with the task user's own
    ``AIRFLOW_HOME`` and an empty config file instead of ``airflow.cfg`` (so no secret setting at all), the
    bundle as the prepared worktrees (``task_bundle.py``) and the task user's copies of the AWS files."""
    from . import task_bundle, task_user

    drop = {
        LAUNCH_PLAN_ENV_VAR,
        contract.conn_env_name(GIT_CONN_ID),
        names.SETTINGS[("core", "simple_auth_manager_passwords_file")].env,
    }
    out = {k: v for k, v in env.items() if k not in drop}
    prepared = [
        {"name": b["name"], "classpath": task_bundle.CLASSPATH, "kwargs": _prepared_kwargs(layout, b["kwargs"])}
        for b in contract.bundle_config(layout.spec, probe=layout.spec.dags.repo is None)
    ]
    credentials, config = task_user.task_aws_files(layout)
    home = str(layout.task_home)
    out.update(
        {
            "HOME": home,
            "AIRFLOW_HOME": home,
            "AIRFLOW_CONFIG": str(layout.tasks / "airflow.cfg"),
            names.SETTINGS[("dag_processor", "dag_bundle_config_list")].env: json.dumps(prepared),
            names.SETTINGS[("dag_processor", "dag_bundle_storage_path")].env: f"{home}/bundles",
            names.SETTINGS[("logging", "base_log_folder")].env: f"{home}/logs",
            "AWS_SHARED_CREDENTIALS_FILE": credentials,
            "AWS_CONFIG_FILE": config,
        }
    )
    return out


def _prepared_kwargs(layout: Layout, kwargs: dict) -> dict:
    out = {"prepared_root": str(layout.bundles), "refresh_interval": kwargs["refresh_interval"]}
    if kwargs.get("subdir"):
        out["subdir"] = kwargs["subdir"]
    return out


def launch_plan(layout: Layout) -> LaunchPlan:
    """What ``launch.py`` does to an Airflow process before Airflow runs in it (``preload.py``; each lever
    and what the bench measured for it: docs/performance.md, "Inner loop")."""
    from . import task_user

    user = task_user.active(layout)
    zygote = {}
    if user is not None:
        # DAG code runs as the task user, forked by its zygote, which preloads instead (zygote.py).
        zygote = {
            "task_zygote_socket": str(task_user.zygote_socket(layout, user)),
            "task_uid": user.uid,
            "task_gid": user.gid,
        }
    return LaunchPlan(
        # Task processes are forks of the scheduler: what it imported, every task starts with.
        scheduler_preload=() if zygote else tuple(preload.modules_for(layout.spec.local.preload)),
        # The scheduler's loop sleeps 0.1 s instead of [scheduler] scheduler_idle_sleep_time (1 s) while a
        # Dag run is queued or running and for a minute after a push: the next task (and the run
        # triggered after a push) starts sooner; idle, nothing changes.
        scheduler_busy_sleep=0.1,
        # The DAG processor forks a process per file and parse: what each would import again (Airflow's
        # task SDK, the standard operators, the providers' asset handlers) is imported once in it, and a
        # finished parse is collected at once instead of up to 1 s later.
        dag_processor_preload=() if zygote else preload.DAG_PROCESSOR_MODULES,
        dag_processor_poll=True,
        # The API server (whose start is the critical path of `up`) builds each distinct route type once
        # instead of once per router an endpoint is included through.
        api_route_types_once=True,
        # Airflow's components start with the database, not after `airflow db migrate`: each imports what
        # it needs (the API server builds its app) and then waits until `up` has stamped the migration.
        migrated_stamp=str(layout.migrated_stamp),
        # They are forked from one process that imported Airflow once for all of them (forkserver.py).
        forkserver_socket=str(layout.forkserver_socket),
        **zygote,
    )


def write_launch_plan(layout: Layout, plan: LaunchPlan | None = None) -> dict[str, str]:
    """Write ``plan`` (default: :func:`launch_plan`) to ``layout.launch_plan`` (0600; no secret in it) and
    return the one variable that names it to the launcher."""
    plan = plan or launch_plan(layout)
    keystore.write_private(layout.launch_plan, plan.to_json())
    return {LAUNCH_PLAN_ENV_VAR: str(layout.launch_plan)}
