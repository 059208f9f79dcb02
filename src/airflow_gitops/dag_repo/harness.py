"""Run the template's DAGs against real services, without the full platform (tests and bench use this).

* :class:`Services` starts a real ``moto_server`` (S3 + STS) and a real ``mlflow server`` (SQLite store,
  artifacts on disk) on 127.0.0.1, and writes an AWS credentials file + config file (with ``endpoint_url``)
  the way the local platform does.
* :class:`Sandbox` is an AIRFLOW_HOME with a migrated SQLite metadata database whose dags folder is a
  copy of the template's ``dags/``; :meth:`Sandbox.run_dag` runs one Dag run with ``dag.test()`` in a
  fresh Python process (Airflow reads its configuration at import time) and returns the task states,
  durations and XCom return values.

The DAG code sees exactly the variables of :func:`airflow_gitops.local.layout.dag_runtime_env`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import template_dir

BIN = Path(sys.executable).parent
RESULT_MARKER = "@@DAG_RESULT@@ "
EXPERIMENT = "airflow-gitops"
REGISTERED_MODEL = "mlops-classifier"
BUCKET = "mlops-data"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass
class Services:
    """Real moto (S3/STS) and MLflow servers on free 127.0.0.1 ports, plus AWS files pointing at moto."""

    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    s3_url: str = ""
    mlflow_url: str = ""

    @property
    def aws_credentials(self) -> Path:
        return self.root / "aws" / "credentials"

    @property
    def aws_config(self) -> Path:
        return self.root / "aws" / "config"

    def start(self) -> Services:
        self.root.mkdir(parents=True, exist_ok=True)
        s3_port, mlflow_port = free_port(), free_port()
        self.s3_url = f"http://127.0.0.1:{s3_port}"
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        moto_log = self.root / "moto.log"
        moto = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=moto_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(moto)
        mlflow_dir = self.root / "mlflow"
        (mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        mlflow_log = self.root / "mlflow.log"
        mlflow = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination", str(mlflow_dir / "artifacts"),
                "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            ],
            stdout=mlflow_log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=mlflow_dir,
            # no background job runner (7 huey consumer processes): the DAGs do not use MLflow jobs
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_new_session=True,  # uvicorn workers are children: stop() ends the whole group
        )  # fmt: skip
        self.procs.append(mlflow)
        try:
            _wait_http(f"{self.s3_url}/moto-api/", moto, moto_log)
            _wait_http(f"{self.mlflow_url}/health", mlflow, mlflow_log, timeout=120)
        except Exception:
            self.stop()
            raise
        self.write_aws_files()
        return self

    def write_aws_files(self) -> None:
        self.aws_credentials.parent.mkdir(parents=True, exist_ok=True)
        self.aws_credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
        self.aws_config.write_text(f"[default]\nregion = {REGION}\nendpoint_url = {self.s3_url}\n")
        self.aws_credentials.chmod(0o600)

    def runtime_env(self) -> dict[str, str]:
        """The same keys as ``airflow_gitops.local.layout.dag_runtime_env``."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
            "MLOPS_REGISTERED_MODEL": REGISTERED_MODEL,
            "MLOPS_DATA_BUCKET": BUCKET,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.aws_credentials),
            "AWS_CONFIG_FILE": str(self.aws_config),
            "AWS_PROFILE": "default",
            "AWS_DEFAULT_REGION": REGION,
        }

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: only this server and its children
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class DagResult:
    dag_id: str
    state: str
    tasks: dict[str, dict[str, Any]]  # task_id -> {state, duration, xcom: {key: value}}
    wall_seconds: float
    maxrss_kb: int
    output: str

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        return self.tasks[task_id]["xcom"].get(key)


@dataclass
class Sandbox:
    """An AIRFLOW_HOME (SQLite metadata DB) whose dags folder is a copy of the template's ``dags/``."""

    root: Path
    runtime_env: dict[str, str]
    # a Git repository (URL or path) to serve the DAGs through GitDagBundle instead of a plain folder
    git_repo: str | None = None
    # set by start_api_server(): dag.test(use_executor=True) then runs each task in its own process
    api_port: int | None = None
    api_proc: subprocess.Popen | None = None

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def dags(self) -> Path:
        return self.repo / "dags"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "MLFLOW_", "MLOPS_"))}
        env.update(self.runtime_env)
        if self.api_port:
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{self.api_port}/execution/"
        if self.git_repo:
            # dag.test(use_executor=True) hands tasks the bundle named "dags-folder": make that a GitDagBundle
            bundle = {
                "name": "dags-folder",
                "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
                "kwargs": {"repo_url": self.git_repo, "tracking_ref": "main", "subdir": "dags"},
            }
            env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([bundle])
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                # bundle clones live in the sandbox, not in the shared default (<tmp>/airflow/dag_bundles)
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.root / "bundles"),
                "PYTHONDONTWRITEBYTECODE": "1",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__API_AUTH__JWT_SECRET": "dag-harness-not-a-secret",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        return env

    def setup(self) -> Sandbox:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.repo.exists():
            shutil.copytree(template_dir(), self.repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        proc = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=self.env(), capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return self

    def start_api_server(self) -> None:
        """A real ``airflow api-server``: what LocalExecutor's task processes talk to (the Execution API)."""
        self.api_port = free_port()
        log = self.root / "api-server.log"
        self.api_proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"],
            env=self.env(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_http(f"http://127.0.0.1:{self.api_port}/api/v2/version", self.api_proc, log, timeout=180)
        except Exception:
            self.stop_api_server()
            raise

    def stop_api_server(self) -> None:
        if self.api_proc is not None:
            try:
                os.killpg(self.api_proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.api_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.api_proc.pid, signal.SIGKILL)
                self.api_proc.wait()
            self.api_proc = None
            self.api_port = None

    def run_dag(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 300) -> DagResult:
        """One Dag run with ``dag.test()`` in a fresh process."""
        return self.run_dags([(dag_id, conf or {})], timeout=timeout)[0]

    def run_dags(self, runs: list[tuple[str, dict[str, Any]]], timeout: float = 600) -> list[DagResult]:
        """Several Dag runs, one after the other, in one fresh process (saves Airflow's start-up per run).

        ``output`` of each result is the whole process output; ``maxrss_kb`` is the process peak so far.
        """
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_gitops.dag_repo.harness", json.dumps(runs)],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # on timeout, end it and any executor workers it started
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise RuntimeError(
                f"dag.test() of {[r[0] for r in runs]} timed out after {timeout}s:\n{stdout[-4000:]}"
            ) from None
        output = stdout + stderr
        lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_MARKER)]
        if len(lines) != len(runs):
            raise RuntimeError(
                f"dag.test() of {[r[0] for r in runs]} produced {len(lines)} result(s) (exit {proc.returncode}):\n"
                f"{output[-6000:]}"
            )
        return [DagResult(output=output, **json.loads(ln[len(RESULT_MARKER) :])) for ln in lines]


def _profile_tasks(memory: dict[str, dict[str, float]]) -> None:
    """Record each task's RSS at start and its peak while it runs (dag.test() runs tasks one by one, in process)."""
    import threading

    import psutil
    from airflow.sdk.definitions import dag as dag_module

    original = dag_module._run_task
    me = psutil.Process()

    def profiled(*, ti, task, **kwargs):
        start_rss = me.memory_info().rss
        peak = [start_rss]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], me.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            return original(ti=ti, task=task, **kwargs)
        finally:
            done.set()
            sampler.join()
            peak[0] = max(peak[0], me.memory_info().rss)
            memory[ti.task_id] = {"rss_start_mb": start_rss / 2**20, "rss_peak_mb": peak[0] / 2**20}

    dag_module._run_task = profiled


def _sample_task_processes(peaks: dict[str, float]):
    """Peak RSS of every task process (title ``airflow worker -- <ti id>``) below this one; returns a stop()."""
    import threading

    import psutil

    me = psutil.Process()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for child in me.children(recursive=True):
                try:
                    title = " ".join(part for part in child.cmdline() if part).strip()  # setproctitle pads
                    if title.startswith("airflow worker -- ") and "LocalExecutor" not in title:
                        ti_id = title.rsplit(" ", 1)[-1]
                        peaks[ti_id] = max(peaks.get(ti_id, 0.0), child.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()

    return stop


def _run_in_this_process(runs: list[tuple[str, dict[str, Any]]]) -> None:
    memory: dict[str, dict[str, float]] = {}
    _profile_tasks(memory)
    for dag_id, conf in runs:
        started = time.monotonic()
        memory.clear()
        # parse afresh for every run: dag.test() applies run_conf to the DAG object's params in place
        _test_one(dag_id, conf, None, memory, started)


def _test_one(dag_id: str, conf: dict[str, Any], bag, memory: dict, started: float):
    import resource

    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = bag or BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
    if bag.import_errors:
        raise RuntimeError(f"import errors: {bag.import_errors}")
    # with an Execution API server to talk to, LocalExecutor runs every task in its own process (as on the platform)
    use_executor = bool(os.environ.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL"))
    task_process_peaks: dict[str, float] = {}
    stop_sampling = _sample_task_processes(task_process_peaks) if use_executor else (lambda: None)
    try:
        dr = bag.dags[dag_id].test(run_conf=conf, use_executor=use_executor)
    finally:
        stop_sampling()
    wall = time.monotonic() - started
    tasks: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for ti in dr.get_task_instances(session=session):
            duration = (ti.end_date - ti.start_date).total_seconds() if ti.end_date and ti.start_date else None
            tasks[ti.task_id] = {"state": str(ti.state), "duration": duration, "xcom": {}, **memory.get(ti.task_id, {})}
            if str(ti.id) in task_process_peaks:  # the task's own process (executor mode)
                tasks[ti.task_id]["task_process_rss_peak_mb"] = task_process_peaks[str(ti.id)]
        rows = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == dr.run_id))
        for row in rows:
            if row.task_id in tasks:
                tasks[row.task_id]["xcom"][row.key] = XComModel.deserialize_value(row)
    result = {
        "dag_id": dag_id,
        "state": str(dr.state),
        "tasks": tasks,
        "wall_seconds": wall,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)
    return bag


if __name__ == "__main__":
    _run_in_this_process([(dag_id, conf) for dag_id, conf in json.loads(sys.argv[1])])
