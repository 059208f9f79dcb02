"""Shared fixtures. ``local_platform``: one real local platform (PostgreSQL, moto, MLflow, Airflow 3)
for the whole test session, on free ports and a temporary state directory, stopped at the end.

Tests that change it (stop a component, ``down``/``up``) must leave it healthy again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port
from rich.console import Console

from airflow_gitops.local.environment import environ_overlay
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.spec import PlatformSpec, parse_spec

# Fixture modules shared by several test files.
pytest_plugins = ["mock_k8s_api", "pg_fixture", "sshd", "kube_cluster"]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def free_ports() -> dict[str, int]:
    """A free port for every component with a port (spec's Ports: a new component gets one too)."""
    from airflow_gitops.spec.models import Ports

    return {name: free_port() for name in Ports.model_fields}


def passable(path: Path) -> Path:
    """``path`` and the folders above it passable (not listable) for other users, as a project folder is:
    pytest makes its temporary folders 0700, and as root DAG code runs as the task user (local.task_user),
    who must reach the state folder. A test that wants it unreachable does not call this."""
    for folder in [Path(path), *Path(path).parents]:
        if not folder.exists():
            continue
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(stat.S_IMODE(mode) | 0o001)
    return path


def make_spec(base_dir: Path, extra: dict | None = None) -> PlatformSpec:
    """A spec on free ports with a short sync interval, state in ``base_dir/.airflow-gitops``."""
    passable(base_dir)
    data = {
        "dags": {"sync_interval": 2},
        "local": {
            "ports": free_ports(),
            "parallelism": 4,
        },
    }
    return parse_spec(_merge(data, extra or {}), base_dir=base_dir)


def quiet_console() -> Console:
    return Console(width=200, force_terminal=False, record=True)


def cleanup_platform(platform: LocalTarget) -> None:
    """Stop everything and remove a PostgreSQL data dir that had to live outside the state dir."""
    platform.down(quiet_console())
    marker = platform.layout.root / "postgres.location"
    if marker.exists():
        shutil.rmtree(Path(marker.read_text().strip()).parent, ignore_errors=True)


@contextlib.contextmanager
def mlflow_login(layout):
    """MLflow's clients in this process send the platform's MLflow credential (its server's authentication
    is on): the user and password tasks get (``dag_runtime_env``), with MLflow's own env names."""
    from airflow_gitops import contract
    from airflow_gitops.local.layout import dag_runtime_env

    login = {k: v for k, v in dag_runtime_env(layout).items() if k in contract.MLFLOW_CREDENTIAL_ENV}
    with environ_overlay(login):
        yield login


def seed_legacy_mlflow(spec: PlatformSpec, tmp: Path) -> dict:
    """A state dir as the platform left it before MLflow moved to PostgreSQL + S3: a SQLite store and
    artifacts on disk, written through the MLflow server the platform ran then (same module, old store;
    its users in ``tmp``: that platform had no MLflow user database)."""
    import mlflow
    from mlflow import MlflowClient
    from serving_fixture import auth_env, client_credentials

    lay = LocalTarget(spec).layout
    lay.mlflow.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_GITOPS_MLFLOW_STORE": f"sqlite:///{lay.mlflow / 'mlflow.db'}",
        "AIRFLOW_GITOPS_MLFLOW_ARTIFACTS": str(lay.mlflow / "artifacts"),
        **auth_env(tmp),
    }
    cmd = [sys.executable, "-m", "airflow_gitops.local.mlflow_server", "127.0.0.1", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=lay.mlflow)
    with client_credentials():
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_for(lambda: _answers(f"{uri}/health"), 120, "the legacy MLflow server")
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("legacy-experiment")
            text = f"legacy artifact {time.time()}"
            (tmp / "legacy.txt").write_text(text)
            with mlflow.start_run() as run:
                mlflow.log_metric("legacy_metric", 0.75)
                mlflow.log_artifact(str(tmp / "legacy.txt"))
            client = MlflowClient(uri)
            client.create_registered_model("legacy-model")
            source = f"runs:/{run.info.run_id}/legacy.txt"
            version = client.create_model_version("legacy-model", source, run.info.run_id)
            client.set_registered_model_alias("legacy-model", "champion", version.version)
        finally:
            server.terminate()
            server.wait(30)
            mlflow.set_tracking_uri(None)
    return {"run_id": run.info.run_id, "text": text, "model": "legacy-model", "version": version.version}


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def local_platform(tmp_path_factory) -> LocalTarget:
    spec = make_spec(tmp_path_factory.mktemp("platform"))
    # The session platform is an UPGRADED one: it starts on a state dir with a legacy MLflow store,
    # which `up` carries over (test_platform_local checks it); fresh starts are covered elsewhere.
    legacy = seed_legacy_mlflow(spec, tmp_path_factory.mktemp("legacy-mlflow"))
    platform = LocalTarget(spec)
    platform.legacy_mlflow = legacy
    try:
        platform.up(quiet_console())
    except BaseException:
        cleanup_platform(platform)
        raise
    with mlflow_login(platform.layout):  # the tests' MLflow clients log in as the platform's tasks do
        yield platform
    cleanup_platform(platform)


class DagRepo:
    """A working clone of a platform's DAG repository, to commit and push like a user."""

    def __init__(self, url: str, work: Path, branch: str = "main", env: dict | None = None):
        self.url, self.work, self.branch, self.env = url, work, branch, env
        subprocess.run(["git", "clone", "-q", "--branch", branch, url, str(work)], check=True, env=env)

    def git(self, *args: str) -> str:
        cmd = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args]
        return subprocess.run(cmd, cwd=self.work, check=True, capture_output=True, text=True, env=self.env).stdout

    def push(self, files: dict[str, str | None], message: str) -> str:
        """Write (or, for None, delete) files, commit, push; return the pushed commit's sha."""
        self.git("pull", "-q", "--rebase", "origin", self.branch)
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", f"HEAD:{self.branch}")
        return self.git("rev-parse", "HEAD").strip()


def tiny_dag(dag_id: str) -> str:
    return f'''
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     tags=["test"], default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def hello():
        return "{dag_id}"
    hello()

_d()
'''


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _answers_any(url: str) -> bool:
    """Any HTTP answer (an unsigned GET / is refused with 403) means the endpoint serves."""
    import httpx

    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def local_s3(platform):
    """The platform's own S3 endpoint (rclone serving ``<state>/s3``, as the ``s3`` component runs it),
    started alone for a test; stopped on exit."""
    from airflow_gitops.local import components
    from airflow_gitops.local.aws import write_local_aws_files

    lay = platform.layout
    lay.supervisor.mkdir(parents=True, exist_ok=True)
    write_local_aws_files(lay)
    program = components._s3_program(platform)
    server = subprocess.Popen(
        program.command, cwd=program.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: server.poll() is None and _answers_any(f"{lay.s3_url}/"), 60, "the S3 endpoint")
        yield server
    finally:
        server.terminate()
        server.wait(30)
