"""Start Airflow's components in-process, after preparing that process for speed.

Measured by ``bench/bench_inner_loop.py``; figures in docs/performance.md ("Inner loop", "Start-up").

1. Preload (scheduler; ``local.preload`` in platform.yaml). With LocalExecutor (Airflow 3, Linux) a
   task's code runs in a process forked twice from the scheduler: scheduler -> LocalExecutor worker
   (``multiprocessing`` fork, ``[core] parallelism`` of them) -> task process (``os.fork`` in
   ``airflow.sdk.execution_time.supervisor``, one per task try; no exec). Whatever the scheduler
   imported before it forked its workers is already in every task process: ``import pandas`` in task
   code becomes a dictionary look-up, and the template pipeline's task code falls from ~12 to ~2.4 s
   per run. The pages are shared copy-on-write. The import happens at the first task, not during
   ``up`` (:func:`patch_local_executor`).

   Tasks cannot leak state into each other through these modules: each task runs in its own fork
   and exits, so a module global a task changes dies with that process, and the scheduler never runs
   task code (tests/test_preload.py runs tasks that try).

2. Fast scheduler loop only when it matters (scheduler). The scheduler sleeps ``[scheduler]
   scheduler_idle_sleep_time`` (1 s) after every loop that changed nothing, so each hand-over from a
   finished task to the next waits ~0.5 s on average. Setting it to 0.1 s everywhere costs CPU all
   day; instead the short sleep applies while a Dag run is queued or running and for a minute after a
   push (:func:`patch_scheduler_busy_sleep`).

3. DAG processor: the same preload for its per-file parse processes (``DAG_PROCESSOR_MODULES``), and
   prompt collection of finished parses (:func:`patch_dag_processor_poll`).

4. Start before the database is migrated (every component; ``WAIT_ENV_VAR``): the command's modules
   are imported - for the API server, its app is built - and only then does the process wait until
   ``up`` has migrated the database (:func:`wait_for_migrations`), so a cold ``up`` overlaps each
   component's start with the migration instead of queueing behind it. (Airflow's own check at each
   start, ``[database] check_migrations``, is off: it loads every alembic revision file, ~1 CPU-s.)

5. API server: FastAPI builds each of Airflow's 215 endpoints ~4 times (once per router it is included
   through) and a pydantic ``TypeAdapter`` for every parameter and response each time (5,765, of which
   458 differ); :func:`patch_fastapi_route_building` reuses the identical ones. The API server's start
   is the critical path of ``up``.

Every patch checks that the Airflow internals it wraps exist and changes nothing (reporting "n/a" in
the component's log) when they do not; tests/test_preload.py fails on an Airflow that moved them.
``launch.py`` runs an Airflow component through :func:`run` when one of the environment variables
below that applies to it is set (non-empty).
"""

from __future__ import annotations

import functools
import gc
import importlib
import importlib.metadata
import os
import sys
import time
from pathlib import Path

from .forkserver import SOCKET_ENV_VAR

ENV_VAR = "AIRFLOW_GITOPS_PRELOAD"  # comma-separated modules (``module:function`` also calls it)
BUSY_SLEEP_ENV_VAR = "AIRFLOW_GITOPS_SCHEDULER_BUSY_SLEEP"  # seconds, e.g. "0.1"
PATCH_ENV_VAR = "AIRFLOW_GITOPS_DAG_PROCESSOR_POLL_PATCH"  # "1"
API_ROUTES_ENV_VAR = "AIRFLOW_GITOPS_API_ROUTE_MEMO"  # "1": the API server builds each route's types once
WAIT_ENV_VAR = "AIRFLOW_GITOPS_MIGRATED_STAMP"  # path: import first, then wait for `up`'s migration stamp
WAIT_MAX_S = 600

# What ``airflow COMMAND`` imports before it touches the database: imported while the database may still
# be migrated (``WAIT_ENV_VAR``). ``airflow.api_fastapi.main`` builds the API server's app at import
# (uvicorn then finds it in ``sys.modules``).
COMMAND_MODULES = {
    "api-server": ("airflow.cli.commands.api_server_command", "airflow.api_fastapi.main"),
    "scheduler": ("airflow.cli.commands.scheduler_command", "airflow.jobs.scheduler_job_runner"),
    "dag-processor": ("airflow.cli.commands.dag_processor_command", "airflow.dag_processing.manager"),
    "triggerer": ("airflow.cli.commands.triggerer_command", "airflow.jobs.triggerer_job_runner"),
}
# What the fork server (``forkserver.py``) imports once for all four components: Airflow and each
# command's modules, except the API server's app, which only the API server builds (with
# :func:`patch_fastapi_route_building` in place).
FORK_SERVER_MODULES = (
    "airflow",
    *dict.fromkeys(m for modules in COMMAND_MODULES.values() for m in modules if m != "airflow.api_fastapi.main"),
)
DAG_PROCESSOR_ENV_VAR = "AIRFLOW_GITOPS_DAG_PROCESSOR_PRELOAD"  # like ENV_VAR, for the DAG processor

# What every task process imports before the first line of task code: Airflow's task runner, the
# DagBag that parses the DAG file again, GitDagBundle (and GitPython) that prepares the bundle.
AIRFLOW_TASK_MODULES = (
    "airflow.sdk",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.providers.git.bundles.git",
    "airflow.providers.standard.decorators.python",
    "netrc",  # requests, on a task's first HTTP call
)

# Imported, or called once imported (``module:function``), when a listed package is preloaded: the
# modules a package imports lazily on first use, and the caches it fills then.
COMPANIONS = {
    "pandas": ("pyarrow.parquet", "pyarrow.dataset", "pyarrow.pandas_compat"),  # read/write Parquet
    "sklearn": ("narwhals.stable.v1", "joblib"),  # scikit-learn's input validation of DataFrames
    "boto3": ("boto3.s3.transfer", "botocore.exceptions"),
    "mlflow": (
        "mlflow.tracking",
        "mlflow.models",
        "mlflow.pyfunc",
        "mlflow.tracing.provider",
        "opentelemetry.sdk.trace",  # mlflow.set_tracking_uri resets MLflow's tracer provider
        # log_model checks the model's pip requirements against the installed packages; the first
        # check maps every installed module to its distribution (~0.5 CPU-s) and keeps it in a
        # module global: filled here once, it is free in every task.
        "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
    ),
}


def modules_for(packages: list[str]) -> list[str]:
    """What the scheduler imports for ``local.preload``: nothing for an empty list, else Airflow's task
    modules, the listed ones and their companions (each once, in that order)."""
    if not packages:
        return []
    out: list[str] = []
    for name in (*AIRFLOW_TASK_MODULES, *packages):
        for m in (name, *COMPANIONS.get(name.split(".")[0], ())):
            if m not in out:
                out.append(m)
    return out


# The DAG processor forks one process per DAG file and parse. What each of them would import or build
# again: Airflow's task SDK and the standard operators, and the providers' asset URI handlers, which
# the first ``Asset(...)`` in a process discovers by importing every provider's asset module (the
# Amazon one imports boto3: ~0.17 CPU-s per parse of a file that defines an Asset).
DAG_PROCESSOR_MODULES = (
    "airflow.sdk",
    "airflow.providers.standard.decorators.python",
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.empty",
    "airflow.providers.standard.sensors.time_delta",
    "airflow_gitops.local.preload:warm_asset_uri_handlers",
)


def warm_asset_uri_handlers() -> None:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    ProvidersManagerTaskRuntime().asset_uri_handlers  # noqa: B018 - a cached property: fill the cache


def preload(modules: list[str]) -> tuple[int, float]:
    """Import ``modules``; one that fails is reported and skipped (a DAG library missing must not stop
    the scheduler). Returns (number imported, seconds)."""
    started = time.monotonic()
    ok = 0
    for name in modules:
        module, _, func = name.partition(":")
        try:
            imported = importlib.import_module(module)
            if func:
                getattr(imported, func)()
            ok += 1
        except Exception as exc:  # noqa: BLE001 - anything a third-party import raises
            print(f"airflow-gitops preload: skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    # Move what was just imported out of the collector's reach: task processes are forks, and a GC
    # pass that walks these objects would copy their (shared) pages in every one of them.
    gc.collect()
    gc.freeze()
    return ok, time.monotonic() - started


def patch_local_executor(modules: list[str]) -> bool:
    """Preload in LocalExecutor right before it forks its workers, and fork them at the first task.

    Airflow forks ``[core] parallelism`` workers in ``LocalExecutor.start``, i.e. while the platform is
    starting. Here ``start`` forks none; ``_check_workers`` forks them when the first task is queued
    (Airflow's own path for replacing dead workers), and right before that the modules are imported.
    So the ~4 CPU-s of imports stay out of ``airflow-gitops up`` (where seven processes already compete
    for two cores), and a platform that runs no task does not hold the libraries (~210 MiB PSS); the
    first task after a start waits for the import once instead.

    ``LocalExecutor._spawn_workers_with_gc_freeze`` calls ``gc.freeze()`` before forking and
    ``gc.unfreeze()`` after, which hands every preloaded object back to the scheduler's collector; its
    full collections then write to those objects' pages, copying them away from the workers that share
    them (measured: scheduler PSS 386 -> 562 MiB within 25 idle minutes). Freezing again after the fork
    keeps them shared.

    Airflow 3.3 internals; returns False (and changes nothing) if they are not there.
    """
    try:
        from airflow.executors.local_executor import LocalExecutor
    except ImportError:
        return False
    start = getattr(LocalExecutor, "start", None)
    spawn = getattr(LocalExecutor, "_spawn_workers_with_gc_freeze", None)
    if start is None or spawn is None or getattr(start, "_airflow_gitops", False):
        return False
    state = {"preloaded": False, "starting": False}

    def patched_start(self):
        state["starting"] = True
        try:
            return start(self)
        finally:
            state["starting"] = False

    def patched_spawn(self, spawn_number):
        if state["starting"]:
            return None  # at the first task instead (_check_workers)
        if not state["preloaded"]:
            state["preloaded"] = True
            ok, seconds = preload(modules)
            print(
                f"airflow-gitops: preloaded {ok}/{len(modules)} modules in {seconds:.1f} s", file=sys.stderr, flush=True
            )
        try:
            return spawn(self, spawn_number)
        finally:
            gc.freeze()

    for fn, name in ((patched_start, "start"), (patched_spawn, "_spawn_workers_with_gc_freeze")):
        fn._airflow_gitops = True
        setattr(LocalExecutor, name, fn)
    return True


def _wrap(cls, name: str, make) -> bool:
    """Replace ``cls.name`` by ``make(original)``, once; False (nothing changed) if it is missing."""
    original = getattr(cls, name, None)
    if original is None or getattr(original, "_airflow_gitops", False):
        return False
    patched = make(original)
    patched._airflow_gitops = True
    setattr(cls, name, patched)
    return True


def patch_scheduler_busy_sleep(busy: float, window: float = 60.0) -> bool:
    """Sleep ``busy`` seconds between idle scheduler loops while a Dag run is queued or running, and for
    ``window`` seconds after a DAG bundle moved to a new version (a push: the run a user triggers next
    is picked up within ``busy`` instead of up to ``[scheduler] scheduler_idle_sleep_time``).

    Wraps ``SchedulerJobRunner._do_scheduling`` (Airflow 3.3 internals; False and no change if they
    are not there): after each call, two small queries (active runs, bundle versions) decide the next
    idle sleep. (Bundle versions are compared as a mapping: PostgreSQL returns the rows in a different
    order after each refresh updates them, which made every loop look like a push.)
    """
    try:
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.models.dagbundle import DagBundleModel
        from airflow.models.dagrun import DagRun
        from airflow.utils.state import DagRunState
        from sqlalchemy import select
    except ImportError:
        return False
    active = (DagRunState.QUEUED, DagRunState.RUNNING)
    seen = {"versions": None, "until": 0.0}

    def make(original):
        def _do_scheduling(self, session):
            result = original(self, session)
            idle = getattr(self, "_airflow_gitops_idle_sleep", None)
            if idle is None:
                idle = self._airflow_gitops_idle_sleep = self._scheduler_idle_sleep_time
            try:
                versions = dict(session.execute(select(DagBundleModel.name, DagBundleModel.version)).all())
                if seen["versions"] is not None and versions != seen["versions"]:
                    seen["until"] = time.monotonic() + window
                seen["versions"] = versions
                busy_now = time.monotonic() < seen["until"] or (
                    session.scalar(select(DagRun.id).where(DagRun.state.in_(active)).limit(1)) is not None
                )
            except Exception:  # noqa: BLE001 - never break the scheduler loop over a sleep length
                busy_now = False
            self._scheduler_idle_sleep_time = min(busy, idle) if busy_now else idle
            return result

        return _do_scheduling

    return _wrap(SchedulerJobRunner, "_do_scheduling", make)


def patch_dag_processor_poll() -> bool:
    """Let Airflow's DAG processor collect a finished parse at once instead of up to 1 s later.

    ``DagFileProcessorManager._run_parsing_loop`` waits on its processors' sockets for up to
    ``1 - loop_duration`` seconds. A parse process closes its sockets (EOF wakes the loop) a moment
    before the kernel lets it be reaped, so ``is_ready`` is often still False in that iteration and
    the result - and the start of the next file - waits out the rest of the second: with
    ``parsing_processes`` 1, up to ~1 s per file. Here the wait is cut to 10 ms while some processor
    has closed all its sockets but not been reaped yet. Airflow 3.3 internals: returns False (and
    changes nothing) if they are not there.
    """
    try:
        from airflow.dag_processing.manager import DagFileProcessorManager
    except ImportError:
        return False

    def make(original):
        def _service_processor_sockets(self, timeout=1.0):
            procs = getattr(self, "_processors", {})
            if procs and any(not getattr(p, "_open_sockets", True) for p in procs.values()):
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            return original(self, timeout=timeout)

        return _service_processor_sockets

    return _wrap(DagFileProcessorManager, "_service_processor_sockets", make)


class _Uncacheable(Exception):
    pass


def _key(value):
    """A hashable key equal only for values FastAPI may treat alike: hashable values by type and equality
    (classes, functions and objects without ``__eq__`` by identity), lists/tuples/dicts element-wise;
    anything else is not cached (raises ``_Uncacheable``)."""
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple(sorted(((_key(k), _key(v)) for k, v in value.items()), key=repr)))
    try:
        hash(value)
    except TypeError:
        raise _Uncacheable from None
    return (type(value), value)


def patch_fastapi_route_building() -> bool:
    """Build each distinct pydantic ``TypeAdapter`` behind FastAPI's route fields once, and each endpoint's
    signature once, in this process (the API server: its start is ~40 % route building).

    ``fastapi.include_router`` re-creates every route of the included router, and each new route makes a
    ``ModelField`` - a new ``TypeAdapter`` (a pydantic core schema) - for every parameter and response
    model again, from the same annotation and ``FieldInfo``. Here ``ModelField.__post_init__`` looks the
    adapter up by everything it is built from (annotation, metadata, ``FieldInfo`` attributes, config;
    see :func:`_key`; a field with a value that cannot be keyed is built as before), and
    ``get_typed_signature`` / ``get_typed_return_annotation`` by the endpoint (a function's signature
    does not change). FastAPI 0.129-0.136 internals (Airflow 3.3 pins fastapi < 0.137); returns False and
    changes nothing when they are not there. tests/test_preload.py checks that every route of Airflow's
    API server validates and serialises with the same schemas as without the patch.
    """
    try:
        import fastapi.dependencies.utils as deps
        import fastapi.routing as routing
        from fastapi._compat import v2
    except ImportError:
        return False
    model_field = getattr(v2, "ModelField", None)
    if model_field is None or not hasattr(v2, "asdict") or not hasattr(model_field, "__post_init__"):
        return False
    if not callable(getattr(deps, "get_typed_signature", None)) or not callable(
        getattr(routing, "get_typed_return_annotation", None)
    ):
        return False
    adapters: dict = {}

    def make_post_init(original):
        def __post_init__(self):
            try:
                d = v2.asdict(self.field_info)
                key = (
                    _key(d["annotation"]),
                    _key(tuple(d["metadata"])),
                    _key(d["attributes"]),
                    _key(self.config),
                )
            except _Uncacheable:
                return original(self)
            adapter = adapters.get(key)
            if adapter is None:
                original(self)
                adapters[key] = self._type_adapter
            else:
                self._type_adapter = adapter

        return __post_init__

    def memo(original):
        seen: dict = {}

        def by_call(call):
            try:
                return seen[call]
            except KeyError:
                result = seen[call] = original(call)
                return result
            except TypeError:  # an unhashable callable
                return original(call)

        return by_call

    if not _wrap(model_field, "__post_init__", make_post_init):
        return False
    _wrap(deps, "get_typed_signature", memo)
    _wrap(routing, "get_typed_return_annotation", memo)  # APIRoute calls it by this name
    return True


@functools.cache
def _airflow_version() -> str:
    return importlib.metadata.version("apache-airflow-core")


def stamp_text(revision: str | None) -> str:
    """What ``up`` writes once it has migrated the database: the installed Airflow and the schema revision."""
    return f"{_airflow_version()} {revision}\n"


def stamp_is_current(stamp: str | Path, db_revision: str | None) -> bool:
    """Does ``stamp`` say this Airflow migrated a database that is at ``db_revision`` now? (Not after an
    Airflow upgrade, nor for a database replaced since.)"""
    try:
        text = Path(stamp).read_text(encoding="utf-8")
    except OSError:
        return False
    return db_revision is not None and text.split() == [_airflow_version(), db_revision]


def _migrated(stamp: str) -> bool:
    """Has ``up`` migrated the database for this Airflow (:func:`stamp_is_current`)?"""
    if not Path(stamp).exists():
        return False
    from airflow import settings
    from sqlalchemy import text

    try:
        with settings.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # noqa: BLE001 - no database yet, no table yet: not migrated
        return False
    return stamp_is_current(stamp, revision)


def wait_for_migrations(command: list[str], stamp: str, timeout: float = WAIT_MAX_S) -> str:
    """Import what ``airflow COMMAND`` needs (``COMMAND_MODULES``), then wait until ``up`` has migrated the
    database (:func:`_migrated`, polled every 0.1 s). Returns a note for the log. After ``timeout``
    seconds it lets the command run anyway (``up`` has failed by then and stops it)."""
    started = time.monotonic()
    for module in COMMAND_MODULES.get(command[1], ()):
        if module == "airflow.api_fastapi.main" and any(a.startswith("--apps") for a in command):
            continue  # it builds the apps named in AIRFLOW_API_APPS, which the CLI sets from --apps
        importlib.import_module(module)
    imported = time.monotonic()
    while not _migrated(stamp):
        if time.monotonic() - imported > timeout:
            return f"gave up waiting for the database migration ({stamp}) after {timeout:.0f} s"
        time.sleep(0.1)
    return f"imported in {imported - started:.1f} s, database ready {time.monotonic() - imported:.1f} s later"


def run(command: list[str], env: dict[str, str]) -> None:
    """Prepare this process as ``env`` asks, then run ``airflow COMMAND...`` in it (as the script would)."""
    notes = []
    if command[1:2] == ["api-server"] and env.get(API_ROUTES_ENV_VAR):
        notes.append(f"route types built once: {'on' if patch_fastapi_route_building() else 'n/a'}")
    import airflow  # noqa: F401 - initialise Airflow (settings, logging) before anything else

    if command[1:2] == ["scheduler"]:
        modules = [m for m in env.get(ENV_VAR, "").split(",") if m.strip()]
        if modules:
            if patch_local_executor(modules):
                notes.append(f"{len(modules)} modules to preload at the first task")
            else:  # not LocalExecutor's layout we know: preload now
                ok, seconds = preload(modules)
                notes.append(f"preloaded {ok}/{len(modules)} modules in {seconds:.1f} s")
        if env.get(BUSY_SLEEP_ENV_VAR):
            busy = float(env[BUSY_SLEEP_ENV_VAR])
            notes.append(f"busy-only loop sleep {busy} s: {'on' if patch_scheduler_busy_sleep(busy) else 'n/a'}")
    if command[1:2] == ["dag-processor"]:
        modules = [m for m in env.get(DAG_PROCESSOR_ENV_VAR, "").split(",") if m.strip()]
        if modules:
            ok, seconds = preload(modules)
            notes.append(f"preloaded {ok}/{len(modules)} modules in {seconds:.1f} s")
        if env.get(PATCH_ENV_VAR):
            notes.append(f"prompt parse collection: {'on' if patch_dag_processor_poll() else 'n/a'}")
    if env.get(WAIT_ENV_VAR) and command[1] in COMMAND_MODULES:
        notes.append(wait_for_migrations(command, env[WAIT_ENV_VAR]))
    if notes:
        print("airflow-gitops: " + "; ".join(notes), file=sys.stderr, flush=True)
    from airflow.__main__ import main

    sys.argv = ["airflow", *command[1:]]
    sys.exit(main())


def start(command: list[str]) -> None:
    """Become ``command``: run it in this process through :func:`run` when it needs that, else exec it."""
    env = dict(os.environ)
    if wanted(command, env):
        run(command, env)  # exits
    os.execvp(command[0], command)


def wanted(command: list[str], env: dict[str, str]) -> bool:
    """Does ``command`` need :func:`run` (rather than a plain exec)?"""
    if not command or command[0].rsplit("/", 1)[-1] != "airflow":
        return False
    if command[1:3] == ["db", "migrate"]:
        return bool(env.get(SOCKET_ENV_VAR))  # forked from the fork server, which imported Airflow already
    if env.get(WAIT_ENV_VAR) and command[1:2] and command[1] in COMMAND_MODULES:
        return True
    if command[1:2] == ["scheduler"]:
        return bool(env.get(ENV_VAR, "").strip() or env.get(BUSY_SLEEP_ENV_VAR))
    if command[1:2] == ["dag-processor"]:
        return bool(env.get(DAG_PROCESSOR_ENV_VAR, "").strip() or env.get(PATCH_ENV_VAR))
    if command[1:2] == ["api-server"]:
        return bool(env.get(API_ROUTES_ENV_VAR))
    return False
