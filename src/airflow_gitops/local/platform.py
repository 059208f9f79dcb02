"""The local target (``LocalTarget``): the seed's whole design on one machine, under supervisor.

``up`` order: preflight (ports, binaries, keys) -> state dir, keys, AWS files, DAG repo -> the
components of ``components.COMPONENTS`` phase by phase (PostgreSQL; S3 endpoint and MLflow;
``airflow db migrate``, then Airflow's four components) -> wait until every one is healthy.
If anything fails, everything started is stopped again and the error names the component and its log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console

from .. import contract, dburl, gitremote, keystore, managed
from ..binaries import venv_bin
from ..errors import PlatformError
from ..fernetkeys import key_file, read_keys, rotate_keys
from ..target import Capability, Target
from . import components, environment, forkserver, preload, process_hooks, task_user
from .airflow_env import ADMIN_USER, airflow_env
from .api import AirflowClient
from .aws import write_local_aws_files
from .components import Phase
from .dag_repo import ensure_probe_branch, seed_local_repo
from .layout import HOST, Layout, postgres_user
from .postgres import LocalPostgres, wait_until
from .status import ComponentStatus, PlatformStatus
from .supervisor import Supervisor
from .sync import Plan, apply, counts, plan, print_plan, read_stored

START_TIMEOUT = 180
HEALTH_POLL_S = 0.2  # `up` returns this much after the last component answers, at most


def port_free(port: int) -> bool:
    """Can we listen on 127.0.0.1:port? (SO_REUSEADDR: a port in TIME_WAIT counts as free.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _printer(console: Console):
    """Plain lines (command lines may hold brackets rich would read as markup)."""
    return lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False)


class LocalTarget(Target):
    name = "local"
    capabilities = frozenset({Capability.AIRFLOW_HERE, Capability.SYNC})
    instead = {
        "render": "use `airflow-gitops up` locally",
        "deploy": "use `airflow-gitops up` locally (`deploy` installs the chart: --target kubernetes)",
    }

    def __init__(self, spec):
        super().__init__(spec)
        self.layout = Layout(spec)
        self.postgres = LocalPostgres(self.layout)
        self.supervisor = Supervisor(self.layout.supervisor, self.layout.logs)

    # --- configuration ---------------------------------------------------------------------------
    def database_url(self) -> str:
        return self.spec.database.resolved_url() or self.postgres.url()

    def checked_database_url(self) -> tuple[str | None, str]:
        if self.spec.database.url is not None:
            return self.spec.database.expanded_url(), ""
        if not self.postgres.initialized:
            return None, "the local PostgreSQL does not exist yet: `up` creates it"
        return self.postgres.url(), ""

    def airflow_env(self) -> dict[str, str]:
        """The environment to run ``airflow`` commands against this platform."""
        return airflow_env(self.layout, self.database_url())

    def client(self) -> AirflowClient:
        return AirflowClient(self.layout.api_url, ADMIN_USER, keystore.admin_password(self.spec))

    @property
    def env_file(self) -> Path:
        return self.layout.supervisor / "airflow.env.json"

    @property
    def session_file(self) -> Path:
        return self.layout.supervisor / "session.json"

    def programs(self):
        return components.programs(self)

    # --- preflight -------------------------------------------------------------------------------
    def _preflight(self) -> None:
        for c in components.enabled(self.layout):
            port = getattr(self.layout.ports, c.port_key) if c.port_key else None
            if port is not None and not port_free(port):
                raise PlatformError(
                    f"port {port} on {HOST} (local.ports.{c.port_key}) is already in use by another program",
                    f"stop that program, or set local.ports.{c.port_key} to a free port in platform.yaml",
                )
        if self.layout.runs_local_postgres:
            from .postgres import binary

            binary("initdb"), binary("postgres")
        if self.spec.dags.is_ssh:
            self._preflight_ssh_files()
        if self.spec.dags.repo:
            # Reach the repository now, with the same key and pinned host key Airflow will use, so a
            # wrong host key or a missing deploy key fails here and not in a dag-processor log.
            try:
                problem = gitremote.branch_problem(self.spec, gitremote.ls_remote(self.spec))
            except gitremote.GitError as err:
                problem = (err.saw, err.fix)
            if problem:
                raise PlatformError(f"DAG repository: {problem[0]}", problem[1])
        self._preflight_task_user()  # last: it creates the user and the state folder's task part

    def _preflight_task_user(self) -> None:
        """As root, DAG code runs as local.task_user: the user exists (the default one is created), can reach
        the state folder and run this Python environment, and the patch that hands DAG code to it applies
        (else nothing starts). The default, ``auto``, runs DAG code as root instead where the user could not
        (a project under /root): said here, and by doctor, with the fix."""
        from .patches import task_zygote

        user = task_user.ensure(self.layout, lambda text: print(f"  {text}", flush=True))
        if user is None:
            return
        bad = task_zygote.GUARD.mismatches(imported=False)
        if bad:
            raise PlatformError(
                f"DAG code is to run as {user.name} (local.task_user), but the patch that does it is off: "
                f"{task_zygote.GUARD.reason(bad)}",
                "use the Airflow of uv.lock (`uv sync --frozen`), or set local.task_user: same in platform.yaml "
                "to run DAG code as root knowingly (it can then read the platform's keys)",
            )
        why = task_user.problem(self.layout, user)
        if why is not None:
            if self.spec.local.task_user != "auto":
                raise why
            print(f"  warning: DAG code runs as root, not {user.name}: {why.problem}. Fix: {why.fix}", flush=True)
            return
        self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        task_user.prepare(self.layout, user)
        task_user.check_can_run(user, self.layout.task_home)

    def _preflight_ssh_files(self) -> None:
        """The deploy key and known_hosts the GitDagBundle will read: present, ours, not a link, 0600."""
        dags = self.spec.dags
        for key, label in ((dags.ssh_key_file, "dags.ssh_key_file"), (dags.known_hosts_file, "dags.known_hosts_file")):
            path = self.spec.path(key)
            if not path.is_file() and not path.is_symlink():
                raise PlatformError(f"{label} points to {path}, which does not exist", f"create it or fix {label}")
        key = self.spec.path(dags.ssh_key_file)
        keystore.load_deploy_key(key)  # refuses links, other owners, passphrases and garbage, naming the fix
        if key.stat().st_mode & 0o077:
            raise PlatformError(
                f"the deploy key {key} is readable by other users (ssh refuses such keys)", f"chmod 600 {key}"
            )

    # --- Connections, Variables, pools ---------------------------------------------------------
    @contextmanager
    def _database(self):
        try:
            conn = dburl.connect(self.database_url(), application_name="airflow-gitops-sync")
        except Exception as err:  # noqa: BLE001 - psycopg2's errors, explained
            saw, fix = dburl.explain_connect_error(err, self.database_url())
            raise PlatformError(f"cannot read Airflow's metadata database: {saw}", fix) from None
        try:
            yield conn
        finally:
            conn.close()

    def sync(self, console: Console, *, dry_run: bool = False, declared: managed.Declared | None = None) -> Plan:
        """Make Airflow's Connections, Variables and pools match platform.yaml (see :mod:`.sync`)."""
        if not self.is_running():
            raise PlatformError(
                "the local platform is not running: nothing to sync Connections, Variables and pools into",
                "`airflow-gitops up` starts it and applies them",
            )
        declared = declared or managed.resolve(self.spec)
        with self._database() as conn:
            result = plan(declared, read_stored(conn, read_keys(key_file(self.spec))))
        if result.changes and not dry_run:
            client = self.client()
            try:
                apply(client, declared, result.changes)
            finally:
                client.close()
        return result

    def _apply_declared(self, console: Console, declared: managed.Declared) -> None:
        """The end of ``up``: apply platform.yaml's Connections, Variables and pools (quiet when there are none)."""
        result = self.sync(console, declared=declared)
        if result.changes or any(result.managed.values()):
            print_plan(result, console)

    def print_plan(self, result: Plan, console: Console, *, dry_run: bool) -> None:
        print_plan(result, console, dry_run=dry_run)

    def declared_counts(self) -> dict[str, dict[str, int]]:
        """connections / variables / pools -> managed and hand-made counts (nothing decrypted)."""
        with self._database() as conn:
            return counts(read_stored(conn, None))

    # --- verbs -----------------------------------------------------------------------------------
    @contextmanager
    def _exclusive(self, verb: str):
        """One ``up``/``down`` at a time in a state folder (flock on ``<state>/.lock``, released when the
        process ends, however it ends); the second says who holds it and touches nothing."""
        import fcntl

        root = self.layout.root
        created = not root.exists()  # then a failed preflight leaves nothing behind, not even the lock
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "?"
                raise PlatformError(
                    f"another airflow-gitops command ({holder}) is starting or stopping the platform in {root}",
                    "wait until it has finished, then run the command again",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{verb}, pid {os.getpid()}".encode(), 0)
            yield
        finally:
            os.close(fd)
            if created and [p.name for p in root.iterdir()] == [".lock"]:
                (root / ".lock").unlink()
                root.rmdir()

    def up(self, console: Console) -> None:
        with self._exclusive("up"):
            self._up(console)

    def _up(self, console: Console) -> None:
        # Every ${VAR} and from_file of connections/variables is read first: a missing one fails here,
        # before anything starts.
        declared = managed.resolve(self.spec)
        if self.supervisor.running():
            states = self.supervisor.states()
            stopped = [n for n, s in states.items() if s["statename"] != "RUNNING"]
            if not stopped:
                console.print(f"Already up: every component is running (state in {self.layout.root}).")
                self._print_access(console)
                self._apply_declared(console, declared)
                return
            console.print(f"Already up, but not running: {', '.join(stopped)}; starting them.")
            for name in stopped:
                self.supervisor.start(name)
            self._wait_healthy(console)
            self._apply_declared(console, declared)
            return
        # Processes a crash left behind (a killed supervisord's children) would hold the ports.
        self._sweep(_printer(console))
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
        # After the components are healthy; a failure here leaves the platform running (`sync` retries).
        self._apply_declared(console, declared)

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
        for make in (keystore.fernet_key, keystore.jwt_secret, keystore.api_secret_key, keystore.admin_password):
            make(self.spec)
        write_local_aws_files(lay)
        user = task_user.active(lay)
        if user is not None:
            task_user.prepare(lay, user)  # after the AWS files: its copies of them
        process_hooks.write_local_settings(lay.airflow_home)  # children die with their parent
        if lay.runs_local_postgres:
            process_hooks.clear_stale_pid_file(self.postgres.data_dir / "postmaster.pid", str(self.postgres.data_dir))
        if self.spec.dags.repo is None:
            if seed_local_repo(lay):
                step(f"seeded the DAG repository {self.spec.local_repo}")
            ensure_probe_branch(lay)
        if lay.runs_local_postgres and not self.postgres.initialized:
            step("creating the PostgreSQL cluster (first start)")
            self.postgres.initdb(lay.logs / "initdb.log")
        keystore.write_private(self.env_file, json.dumps(self.airflow_env()))
        self.supervisor.write_conf(self.programs())
        self._start_supervisord()
        migrate = False
        for phase in Phase:
            if phase is Phase.AIRFLOW_IMPORT:
                # Airflow's components wait for a stamp that is current for the database they see
                # (preload.wait_for_migrations); a stale one goes now that the database answers.
                migrate = self._forget_stale_stamp()
            if phase is Phase.AIRFLOW and migrate:
                self._migrate(step)
            for c in components.enabled(lay):
                if c.prepare and c.phase is phase:
                    c.prepare(self, step)  # before it starts, or, if it started earlier, what it waits for
            started = [c for c in components.enabled(lay) if c.start_phase is phase]
            for c in started:
                step(f"starting {c.name}")
                self.supervisor.start(c.name)
            for c in started:
                if c.on_ready:
                    self._wait_ready(c)
                    c.on_ready(self)
        self._wait_healthy(step)

    def _wait_ready(self, c) -> None:
        """Until ``c`` answers its health probe (its ``on_ready`` needs it), or fail naming its log."""
        if not wait_until(lambda: c.healthy(self, None), c.ready_timeout):
            raise PlatformError(
                f"{c.name} did not answer within {c.ready_timeout:.0f} s",
                f"read its log: `airflow-gitops logs {c.name}`",
                log=str(self.supervisor.log_of(c.name)),
            )

    def _names(self) -> list[str]:
        return [c.name for c in components.enabled(self.layout)]

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

    def _forget_stale_stamp(self) -> bool:
        """Does the database need ``airflow db migrate``? Then the stamp goes (True).

        The stamp holds the Airflow version and the revision the database had right after our last
        migration: a no-op migrate would still cost ~8 CPU-seconds of imports on every ``up``, and
        Airflow's components wait for the stamp before they touch the database.
        """
        stamp = self.layout.migrated_stamp
        if preload.stamp_is_current(stamp, self._db_revision()):
            return False
        stamp.unlink(missing_ok=True)
        return True

    def _migrate(self, step) -> None:
        """``airflow db migrate``, then the stamp (:meth:`_forget_stale_stamp`)."""
        step("migrating Airflow's metadata database")
        log = self.layout.logs / "migrate.log"
        with open(log, "w") as fh:
            # Through the launcher, with the components' environment file: forked from the fork server,
            # which has imported Airflow already (on a cold start ~1.3 CPU-s less while all else starts).
            result = subprocess.run(
                [*components.launch_command(self.env_file), venv_bin("airflow"), "db", "migrate"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.layout.airflow_home,
                env=environment.supervisord_env(self.layout),  # what the components start with
            )
        if result.returncode != 0:
            raise PlatformError(
                "`airflow db migrate` failed: the metadata database could not be prepared",
                "read the log; with an external database.url check the URL and that the user may create tables",
                log=str(log),
            )
        self.layout.migrated_stamp.write_text(preload.stamp_text(self._db_revision()))

    def is_running(self) -> bool:
        """Cheap: does supervisord answer on its socket? (No health probes.)"""
        return self.supervisor.running()

    def component_health(self, names=None, states: dict | None = None) -> dict[str, bool]:
        """Per component (or those in ``names``): is it answering? (supervisor state alone says only that
        it runs)."""
        states = self.supervisor.states() if states is None else states
        probed = [c for c in components.enabled(self.layout) if names is None or c.name in names]
        api_health = None
        if any(c.reported_by_api for c in probed):
            try:
                api_health = components.probe_client().get(f"{self.layout.api_url}/api/v2/monitor/health").json()
            except (httpx.HTTPError, ValueError):
                pass
        return {
            c.name: states.get(c.name, {}).get("statename") == "RUNNING" and c.healthy(self, api_health) for c in probed
        }

    def _wait_healthy(self, step) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        step("waiting for every component to be healthy")
        # A component that answered is not probed again (a crash still shows in its supervisor state):
        # while seven processes start on two cores, each probe round costs CPU (a PostgreSQL login, the
        # API server's health query) that the slowest starts need more.
        pending = set(self._names())
        while True:
            states = self.supervisor.states()
            for name, info in states.items():
                if info["statename"] in ("FATAL", "BACKOFF", "EXITED"):
                    raise PlatformError(
                        f"{name} failed to start ({info['statename'].lower()}: {info.get('spawnerr') or 'it exited'})",
                        f"read its log: `airflow-gitops logs {name}`",
                        log=str(self.supervisor.log_of(name)),
                    )
            health = self.component_health(pending, states)
            pending -= {name for name, ok in health.items() if ok}
            if not pending:
                return
            if time.monotonic() > deadline:
                bad = sorted(pending)
                raise PlatformError(
                    f"not healthy after {START_TIMEOUT} s: {', '.join(bad)}",
                    f"read the log: `airflow-gitops logs {bad[0]}`",
                    log=str(self.supervisor.log_of(bad[0])),
                )
            time.sleep(HEALTH_POLL_S)

    def _start_supervisord(self) -> None:
        """Start supervisord (its programs as written in its conf) as a new session of this platform."""
        # Every process supervisord starts carries this start's token and is in supervisord's session:
        # what `down` and the next `up` stop, and nothing else (process_hooks.leftovers).
        session = process_hooks.Session.new(self.layout.root)
        keystore.write_private(self.session_file, session.to_json())
        # An allow-listed environment, not the shell's (environment.py): no token, ssh-agent, AWS key or
        # AIRFLOW__ setting of the user's reaches a component or task, nor the ${VAR}s platform.yaml
        # refers to (read by airflow-gitops, never by Airflow); plus this start's token.
        env = {**environment.supervisord_env(self.layout), process_hooks.SESSION_ENV_VAR: session.token}
        self.supervisor.start_daemon(env)
        pid = int(self.supervisor.pidfile.read_text())
        keystore.write_private(self.session_file, session.with_supervisord(pid).to_json())

    def session(self) -> process_hooks.Session | None:
        """What marks the processes the last `up` started (None before the first, or in a copy of the
        state directory)."""
        try:
            return process_hooks.Session.from_json(keystore.read_private(self.session_file), self.layout.root)
        except (FileNotFoundError, PlatformError):
            return None

    def leftovers(self) -> list[process_hooks.Leftover]:
        """Live processes the last `up` started (supervisord and all it started, while it runs)."""
        return process_hooks.leftovers(self.session(), self._run_as_uids())

    def _run_as_uids(self) -> list[int]:
        """The users the platform's processes run as besides ours: PostgreSQL's, the task user's."""
        user = postgres_user() if self.layout.runs_local_postgres else None
        uids = [user.pw_uid] if user else []
        try:
            tasks = task_user.resolve(self.layout)
        except PlatformError:
            tasks = None  # not created yet: nothing of it runs
        return uids + ([tasks.uid] if tasks else [])

    def _sweep(self, say) -> list[process_hooks.Leftover]:
        """Terminate processes of this platform that supervisord does not know (any more)."""
        return process_hooks.sweep(self.session(), say, self._run_as_uids())

    def down(self, console: Console) -> None:
        with self._exclusive("down"):
            self._down(console)

    def _down(self, console: Console) -> None:
        if not self.supervisor.running():
            left = self._sweep(_printer(console))
            state = "Stopped what was left" if left else "Nothing is running"
            console.print(f"{state}. All data is kept in {self.layout.root}", soft_wrap=True)
            return
        with console.status("stopping"):
            self.supervisor.shutdown()
        self._sweep(_printer(console))
        console.print(
            f"Stopped. All data is kept in {self.layout.root}; `airflow-gitops up` resumes it.", soft_wrap=True
        )

    def parsed_commit(self, bundle: str = contract.BUNDLE_NAME) -> str | None:
        """The bundle version (Git commit) Airflow's DAG processor last parsed."""
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.database_url(), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                row = conn.execute(
                    sqlalchemy.text("SELECT version FROM dag_bundle WHERE name = :n"), {"n": bundle}
                ).first()
            engine.dispose()
            return row[0] if row else None
        except Exception:
            return None

    def component_pids(self, states: dict[str, dict] | None = None) -> dict[str, int]:
        """Component -> the pid of the process that runs it: what supervisord started, or, for Airflow's
        components, the fork of the fork server that stands behind it (``forkserver.py``)."""
        states = self.supervisor.states() if states is None else states
        server = forkserver.ping(str(self.layout.forkserver_socket))
        forked = server["children"] if server else {}
        pids = {name: info.get("pid") for name, info in states.items() if info.get("pid")}
        return {name: forked.get(pid, pid) for name, pid in pids.items()}

    def status(self) -> PlatformStatus:
        running = self.is_running()
        states = self.supervisor.states() if running else {}
        pids = self.component_pids(states) if running else {}
        health = self.component_health() if running else {}
        lay = self.layout
        return PlatformStatus(
            running=running,
            healthy=running and bool(health) and all(health.values()),
            state_dir=str(lay.root),
            components={
                c.name: ComponentStatus(
                    state=states[c.name]["statename"] if c.name in states else "STOPPED",
                    healthy=health.get(c.name, False),
                    pid=pids.get(c.name),
                    log=str(self.supervisor.log_of(c.name)),
                    detail=c.detail(self) if c.detail and running else None,
                )
                for c in components.enabled(lay)
            },
            urls=components.urls(lay),
            api_url=lay.api_url,
            login={
                "username": ADMIN_USER,
                "password_file": str(lay.secrets / keystore.ADMIN_PASSWORD),
                # the local MLflow answers nothing but /health without its own login (mlflow_server.py)
                **(
                    {
                        "mlflow_username": keystore.MLFLOW_USER,
                        "mlflow_password_file": str(lay.secrets / keystore.MLFLOW_PASSWORD),
                    }
                    if lay.runs_local_mlflow
                    else {}
                ),
            },
            dag_repo=self.spec.dag_repo_url,
            branch=self.spec.dags.branch,
            sub_path=self.spec.dags.sub_path,
            branch_head=gitremote.branch_head(self.spec),
            parsed_commit=self.parsed_commit() if running else None,
            persistence=components.persistence(lay),
            declared=self._declared_counts_or_empty() if running else {},
        )

    def _declared_counts_or_empty(self) -> dict[str, dict[str, int]]:
        try:
            return self.declared_counts()
        except Exception:  # noqa: BLE001 - status shows what it can; `doctor` explains a database problem
            return {}

    def print_status(self, report: PlatformStatus, console: Console) -> None:
        from .report import print_status

        print_status(report, console)

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

    def run_dag(self, dag_id: str, conf: str | None, timeout: float, console: Console) -> dict:
        from .run import run_dag

        return run_dag(self, dag_id, conf, timeout, console)

    def predict(self, records: str | None, console: Console) -> dict:
        from .predict import predict

        return predict(self, records, console)

    def rotate_fernet_key(self, console: Console) -> None:
        if not self.is_running():
            raise PlatformError(
                "the local platform is not running: the rotation needs its database",
                "`airflow-gitops up`, then run `airflow-gitops rotate-fernet-key` again",
            )
        rotate_keys(key_file(self.spec), self.database_url(), self.airflow_env(), console)
        console.print("Restarting the components so they run with the new key only ...")
        self.down(console)
        self.up(console)
