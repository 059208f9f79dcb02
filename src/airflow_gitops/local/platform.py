"""The local target: the seed's whole design on one machine, under supervisor.

``up`` order: preflight (ports, binaries, keys) -> state dir, keys, AWS files, DAG repo -> PostgreSQL
-> ``airflow db migrate`` -> S3 endpoint, MLflow, Airflow's four components -> wait until healthy.
If anything fails, everything started is stopped again and the error names the component and its log.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console

from .. import secrets
from ..errors import PlatformError
from .airflow_env import ADMIN_USER, airflow_env
from .api import AirflowClient
from .aws import write_local_aws_files
from .dag_repo import branch_head, seed_local_repo
from .layout import HOST, Layout
from .postgres import LocalPostgres, wait_until
from .supervisor import Program, Supervisor

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
START_TIMEOUT = 180

SURVIVES = {
    "survives down/up": [
        "metadata database (DAG runs, Connections, Variables)",
        "DAG repository",
        "keys",
        "MLflow runs, models, artifacts",
        "task logs",
    ],
    "lost on down": ["objects in the local S3 endpoint (in memory; pipelines re-ingest them)"],
}


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def port_free(port: int) -> bool:
    """Can we listen on 127.0.0.1:port? (SO_REUSEADDR: a port in TIME_WAIT counts as free.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


class LocalPlatform:
    def __init__(self, spec):
        self.spec = spec
        self.layout = Layout(spec)
        self.postgres = LocalPostgres(self.layout)
        self.supervisor = Supervisor(self.layout.supervisor, self.layout.logs)

    # --- configuration ---------------------------------------------------------------------------
    def database_url(self) -> str:
        return self.spec.database.resolved_url() or self.postgres.url()

    def airflow_env(self) -> dict[str, str]:
        """The environment to run ``airflow`` commands against this platform."""
        return airflow_env(self.layout, self.database_url())

    def client(self) -> AirflowClient:
        return AirflowClient(self.layout.api_url, ADMIN_USER, secrets.admin_password(self.spec))

    @property
    def env_file(self) -> Path:
        return self.layout.supervisor / "airflow.env.json"

    def programs(self) -> list[Program]:
        lay = self.layout
        progs: list[Program] = []
        if lay.runs_local_postgres:
            progs.append(
                Program("postgres", self.postgres.command(), user=self.postgres.run_as, stopwaitsecs=30, priority=10)
            )
        if lay.runs_local_s3:
            progs.append(Program("s3", [_bin("moto_server"), "-H", HOST, "-p", str(lay.ports.s3)], priority=20))
        if lay.runs_local_mlflow:
            command = [
                sys.executable,
                "-m",
                "airflow_gitops.local.mlflow_server",
                HOST,
                str(lay.ports.mlflow),
                f"sqlite:///{lay.mlflow / 'mlflow.db'}",
                str(lay.mlflow / "artifacts"),
            ]
            progs.append(Program("mlflow", command, directory=lay.mlflow, priority=20))
        env_file = self.env_file
        airflow = _bin("airflow")
        commands = {
            "api-server": [airflow, "api-server"],
            # --skip-serve-logs: the API server reads task logs from the shared local folder, so no
            # log server needs to listen at all (Airflow's would bind 0.0.0.0).
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        }
        for name in AIRFLOW_COMPONENTS:
            launch = [sys.executable, "-m", "airflow_gitops.local.launch", str(env_file), "--"]
            progs.append(
                Program(name, launch + commands[name], directory=lay.airflow_home, stopwaitsecs=30, priority=30)
            )
        return progs

    # --- preflight -------------------------------------------------------------------------------
    def _preflight(self) -> None:
        lay = self.layout
        wanted = {"api": lay.ports.api}
        if lay.runs_local_postgres:
            wanted["postgres"] = lay.ports.postgres
        if lay.runs_local_s3:
            wanted["s3"] = lay.ports.s3
        if lay.runs_local_mlflow:
            wanted["mlflow"] = lay.ports.mlflow
        for key, port in wanted.items():
            if not port_free(port):
                raise PlatformError(
                    f"port {port} on {HOST} (local.ports.{key}) is already in use by another program",
                    f"stop that program, or set local.ports.{key} to a free port in platform.yaml",
                )
        if lay.runs_local_postgres:
            from .postgres import binary

            binary("initdb"), binary("postgres")
        dags = self.spec.dags
        if dags.is_ssh:
            for key, label in (
                (dags.ssh_key_file, "dags.ssh_key_file"),
                (dags.known_hosts_file, "dags.known_hosts_file"),
            ):
                path = self.spec.path(key)
                if not path.is_file():
                    raise PlatformError(f"{label} points to {path}, which does not exist", f"create it or fix {label}")
            key = self.spec.path(dags.ssh_key_file)
            if key.stat().st_mode & 0o077:
                raise PlatformError(
                    f"the deploy key {key} is readable by other users (ssh refuses such keys)",
                    f"chmod 600 {key}",
                )
        if dags.repo:
            # Reach the repository now, with the same key and pinned host key Airflow will use, so a
            # wrong host key or a missing deploy key fails here and not in a dag-processor log.
            from ..checks.git import check_branch, ls_remote

            remote, result = ls_remote(self.spec, dags.repo)
            if remote is not None:
                result = check_branch(self.spec, remote)
            if result.status == "fail":
                raise PlatformError(f"DAG repository: {result.saw}", result.fix)

    # --- verbs -----------------------------------------------------------------------------------
    def up(self, console: Console) -> None:
        if self.supervisor.running():
            states = self.supervisor.states()
            stopped = [n for n, s in states.items() if s["statename"] != "RUNNING"]
            if not stopped:
                console.print(f"Already up: every component is running (state in {self.layout.root}). Nothing to do.")
                self._print_access(console)
                return
            console.print(f"Already up, but not running: {', '.join(stopped)}; starting them.")
            for name in stopped:
                self.supervisor.start(name)
            self._wait_healthy(console)
            return
        self._preflight()
        started = time.monotonic()
        try:
            with self._progress(console) as step:
                self._start(step)
        except BaseException:
            self.supervisor.shutdown()
            raise
        console.print(f"[green]Platform is up[/] in {time.monotonic() - started:.1f} s.")
        self._print_access(console)

    @contextmanager
    def _progress(self, console: Console):
        with console.status("starting", spinner="dots") as status:

            def step(text: str) -> None:
                status.update(text)
                console.log(text, highlight=False) if console.is_terminal else console.print(f"  {text}")

            yield step

    def _start(self, step) -> None:
        lay = self.layout
        for d in (lay.root, lay.airflow_home, lay.logs, lay.mlflow, lay.bundles):
            d.mkdir(parents=True, exist_ok=True)
        step("keys: Fernet, JWT, API secret, passwords (0600, reused on every start)")
        for make in (secrets.fernet_key, secrets.jwt_secret, secrets.api_secret_key, secrets.admin_password):
            make(self.spec)
        write_local_aws_files(lay)
        if self.spec.dags.repo is None and seed_local_repo(lay):
            step(f"seeded the DAG repository {self.spec.local_repo}")
        if lay.runs_local_postgres and not self.postgres.initialized:
            step("creating the PostgreSQL cluster (first start)")
            self.postgres.initdb(lay.logs / "initdb.log")
        secrets.write_private(self.env_file, json.dumps(self.airflow_env()))
        self.supervisor.write_conf(self.programs())
        self.supervisor.start_daemon()
        if lay.runs_local_postgres:
            step("starting PostgreSQL")
            self.supervisor.start("postgres")
            if not wait_until(self.postgres.ready, 60):
                raise PlatformError(
                    "PostgreSQL did not accept connections within 60 s",
                    "read its log: `airflow-gitops logs postgres`",
                    log=str(self.supervisor.log_of("postgres")),
                )
            self.postgres.ensure_database()
        for name in ("s3", "mlflow"):
            if name in self._names():
                step(f"starting {name}")
                self.supervisor.start(name)
        self._migrate(step)
        for name in AIRFLOW_COMPONENTS:
            step(f"starting {name}")
            self.supervisor.start(name)
        self._wait_healthy(step)

    def _names(self) -> list[str]:
        return [p.name for p in self.programs()]

    def _db_revision(self) -> str | None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.database_url(), connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
        except sqlalchemy.exc.SQLAlchemyError:
            return None  # no database or no schema yet: migrate
        finally:
            engine.dispose()

    def _migrate(self, step) -> None:
        """``airflow db migrate``, skipped when this Airflow version already migrated this database.

        A no-op migrate still costs ~8 CPU-seconds of imports on every ``up``; the stamp holds the
        Airflow version and the revision the database had right after our last migration.
        """
        stamp = self.layout.airflow_home / "migrated.stamp"
        version = importlib.metadata.version("apache-airflow-core")
        if stamp.exists() and stamp.read_text().strip() == f"{version} {self._db_revision()}":
            return
        step("migrating Airflow's metadata database")
        log = self.layout.logs / "migrate.log"
        with open(log, "w") as fh:
            result = subprocess.run(
                [_bin("airflow"), "db", "migrate"],
                env={**os.environ, **self.airflow_env()},
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.layout.airflow_home,
            )
        if result.returncode != 0:
            raise PlatformError(
                "`airflow db migrate` failed: the metadata database could not be prepared",
                "read the log; with an external database.url check the URL and that the user may create tables",
                log=str(log),
            )
        stamp.write_text(f"{version} {self._db_revision()}\n")

    def component_health(self) -> dict[str, bool]:
        """Per component: is it answering? (supervisor state alone says only that it runs)."""
        lay = self.layout
        out: dict[str, bool] = {}
        states = self.supervisor.states()
        for name in states:
            out[name] = states[name]["statename"] == "RUNNING"
        if "postgres" in out:
            out["postgres"] = out["postgres"] and self.postgres.ready()
        if "s3" in out:
            out["s3"] = out["s3"] and _http_ok(f"http://{HOST}:{lay.ports.s3}/moto-api/")
        if "mlflow" in out:
            out["mlflow"] = out["mlflow"] and _http_ok(f"{lay.mlflow_url}/health")
        try:
            health = httpx.get(f"{lay.api_url}/api/v2/monitor/health", timeout=3).json()
        except (httpx.HTTPError, ValueError):
            health = None
        if "api-server" in out:
            out["api-server"] = out["api-server"] and health is not None
        for name, key in HEALTH_KEYS.items():
            if name in out:
                status = ((health or {}).get(key) or {}).get("status")
                out[name] = out[name] and status == "healthy"
        return out

    def _wait_healthy(self, step) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        step("waiting for every component to be healthy")
        while True:
            for name, info in self.supervisor.states().items():
                if info["statename"] in ("FATAL", "BACKOFF", "EXITED"):
                    raise PlatformError(
                        f"{name} failed to start ({info['statename'].lower()}: {info.get('spawnerr') or 'it exited'})",
                        f"read its log: `airflow-gitops logs {name}`",
                        log=str(self.supervisor.log_of(name)),
                    )
            health = self.component_health()
            if all(health.values()):
                return
            if time.monotonic() > deadline:
                bad = [n for n, ok in health.items() if not ok]
                raise PlatformError(
                    f"not healthy after {START_TIMEOUT} s: {', '.join(bad)}",
                    f"read the log: `airflow-gitops logs {bad[0]}`",
                    log=str(self.supervisor.log_of(bad[0])),
                )
            time.sleep(0.5)

    def down(self, console: Console) -> None:
        if not self.supervisor.running():
            console.print(f"Nothing is running. All data is kept in {self.layout.root}", soft_wrap=True)
            return
        with console.status("stopping"):
            self.supervisor.shutdown()
        console.print(
            f"Stopped. All data is kept in {self.layout.root}; `airflow-gitops up` resumes it.", soft_wrap=True
        )
        console.print("Lost on down: " + "; ".join(SURVIVES["lost on down"]), soft_wrap=True)

    def parsed_commit(self) -> str | None:
        """The bundle version (Git commit) Airflow's DAG processor last parsed."""
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.database_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                row = conn.execute(
                    sqlalchemy.text("SELECT version FROM dag_bundle WHERE name = :n"), {"n": "dags"}
                ).first()
            engine.dispose()
            return row[0] if row else None
        except Exception:
            return None

    def status(self) -> dict:
        running = self.supervisor.running()
        states = self.supervisor.states() if running else {}
        health = self.component_health() if running else {}
        components = {
            name: {
                "state": states[name]["statename"] if name in states else "STOPPED",
                "healthy": health.get(name, False),
                "pid": states.get(name, {}).get("pid") or None,
                "log": str(self.supervisor.log_of(name)),
            }
            for name in self._names()
        }
        return {
            "running": running,
            "healthy": running and all(health.values()) and bool(health),
            "state_dir": str(self.layout.root),
            "components": components,
            "api_url": self.layout.api_url,
            "mlflow_url": self.layout.mlflow_url,
            "s3_url": self.layout.s3_url,
            "login": {
                "username": ADMIN_USER,
                "password_file": str(self.layout.secrets / secrets.ADMIN_PASSWORD),
            },
            "dag_repo": self.spec.dag_repo_url,
            "branch": self.spec.dags.branch,
            "sub_path": self.spec.dags.sub_path,
            "branch_head": branch_head(self.layout),
            "parsed_commit": self.parsed_commit() if running else None,
            "persistence": SURVIVES,
        }

    def logs(self, component: str | None, lines: int, console: Console) -> None:
        names = self._names() + ["migrate", "initdb", "supervisord"]
        if component and component not in names:
            raise PlatformError(f"no component named {component!r}", f"use one of: {', '.join(names)}")
        for name in [component] if component else self._names():
            path = self.layout.logs / f"{name}.log"
            console.rule(f"{name}  ({path})")
            if not path.exists():
                console.print("(no log yet)")
                continue
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            console.print("\n".join(tail), markup=False, highlight=False)

    def _print_access(self, console: Console) -> None:
        from .report import print_access

        print_access(self.status(), console)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code < 500
    except httpx.HTTPError:
        return False
