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

4. Start before the database is migrated (every component; the plan's ``migrated_stamp``): the command's modules
   are imported - for the API server, its app is built - and only then does the process wait until
   ``up`` has migrated the database (:func:`wait_for_migrations`), so a cold ``up`` overlaps each
   component's start with the migration instead of queueing behind it. (Airflow's own check at each
   start, ``[database] check_migrations``, is off: it loads every alembic revision file, ~1 CPU-s.)

5. API server: FastAPI builds each of Airflow's 215 endpoints ~4 times (once per router it is included
   through) and a pydantic ``TypeAdapter`` for every parameter and response each time (5,765, of which
   458 differ); :func:`patch_fastapi_route_building` reuses the identical ones. The API server's start
   is the critical path of ``up``.

Each patch of Airflow (or FastAPI) internals is a module of ``patches/`` behind a guard: it checks the
fingerprint of every upstream function it replaces or relies on, and when one differs from the versions
it was verified on it changes nothing, says so in the component's log (and "n/a" in the note below) and
in ``doctor``; tests/test_patches.py fails on an upstream that changed them.
Which of these a component gets is the launch plan's (``launch_plan.py``: one record the local target
writes, named by one environment variable); ``launch.py`` runs an Airflow component through :func:`run`
when a lever of the plan applies to it (:func:`wanted`).
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

from .launch_plan import LaunchPlan, from_env_or_exit
from .patches import local_executor
from .patches.dag_processor_poll import patch_dag_processor_poll
from .patches.fastapi_routes import patch_fastapi_route_building
from .patches.scheduler_sleep import patch_scheduler_busy_sleep

WAIT_MAX_S = 600

# What ``airflow COMMAND`` imports before it touches the database: imported while the database may still
# be migrated (the plan's ``migrated_stamp``). ``airflow.api_fastapi.main`` builds the API server's app at import
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
    """Preload ``modules`` in LocalExecutor right before it forks its workers, and fork them at the first
    task (``patches/local_executor.py``). False (nothing changed) when its guard is off."""

    def before_first_fork() -> None:
        ok, seconds = preload(modules)
        print(f"airflow-gitops: preloaded {ok}/{len(modules)} modules in {seconds:.1f} s", file=sys.stderr, flush=True)

    return local_executor.patch_local_executor(before_first_fork)


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


def run(command: list[str], plan: LaunchPlan) -> None:
    """Prepare this process as ``plan`` says, then run ``airflow COMMAND...`` in it (as the script would)."""
    notes = []
    if command[1:2] == ["api-server"] and plan.api_route_types_once:
        notes.append(f"route types built once: {'on' if patch_fastapi_route_building() else 'n/a'}")
    import airflow  # noqa: F401 - initialise Airflow (settings, logging) before anything else

    if plan.task_zygote_socket and command[1:2] in (["scheduler"], ["dag-processor"]):
        notes.append(_task_user(plan))

    if command[1:2] == ["scheduler"]:
        modules = list(plan.scheduler_preload)
        if modules:
            if patch_local_executor(modules):
                notes.append(f"{len(modules)} modules to preload at the first task")
            else:  # not LocalExecutor's layout we know: preload now
                ok, seconds = preload(modules)
                notes.append(f"preloaded {ok}/{len(modules)} modules in {seconds:.1f} s")
        if plan.scheduler_busy_sleep:
            busy = plan.scheduler_busy_sleep
            notes.append(f"busy-only loop sleep {busy} s: {'on' if patch_scheduler_busy_sleep(busy) else 'n/a'}")
    if command[1:2] == ["dag-processor"]:
        modules = list(plan.dag_processor_preload)
        if modules:
            ok, seconds = preload(modules)
            notes.append(f"preloaded {ok}/{len(modules)} modules in {seconds:.1f} s")
        if plan.dag_processor_poll:
            notes.append(f"prompt parse collection: {'on' if patch_dag_processor_poll() else 'n/a'}")
    if plan.migrated_stamp and command[1] in COMMAND_MODULES:
        notes.append(wait_for_migrations(command, plan.migrated_stamp))
    if notes:
        print("airflow-gitops: " + "; ".join(notes), file=sys.stderr, flush=True)
    from airflow.__main__ import main

    sys.argv = ["airflow", *command[1:]]
    sys.exit(main())


def _task_user(plan: LaunchPlan) -> str:
    """Task and parse processes forked by the task user's zygote (``patches/task_zygote``), or exit: with the
    patch off they would be forks of this process - DAG code as root, holding the platform's keys."""
    from .patches.task_zygote import patch_task_zygote

    if patch_task_zygote(plan.task_zygote_socket, plan.task_uid, plan.task_gid):
        return f"task and parse processes run as uid {plan.task_uid} (zygote {plan.task_zygote_socket})"
    print(
        "airflow-gitops: error: local.task_user is set but the patch that runs DAG code as that user is off "
        "(the line above says why); refusing to run DAG code as root. Fix: use the Airflow of uv.lock, or set "
        "local.task_user: same in platform.yaml to run it as root knowingly (it can then read the platform's keys)",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(3)


def start(command: list[str], plan: LaunchPlan | None = None) -> None:
    """Become ``command``: run it in this process through :func:`run` when its launch plan (``plan``, else
    the one this process's environment names) asks for that, else exec it."""
    if plan is None:
        plan = from_env_or_exit()
    if plan is not None and wanted(command, plan):
        run(command, plan)  # exits
    os.execvp(command[0], command)


def wanted(command: list[str], plan: LaunchPlan) -> bool:
    """Does ``command`` need :func:`run` (rather than a plain exec)?"""
    if not command or command[0].rsplit("/", 1)[-1] != "airflow":
        return False
    if command[1:3] == ["db", "migrate"]:
        return bool(plan.forkserver_socket)  # forked from the fork server, which imported Airflow already
    if plan.migrated_stamp and command[1:2] and command[1] in COMMAND_MODULES:
        return True
    if command[1:2] == ["scheduler"]:
        return bool(plan.scheduler_preload or plan.scheduler_busy_sleep or plan.task_zygote_socket)
    if command[1:2] == ["dag-processor"]:
        return bool(plan.dag_processor_preload or plan.dag_processor_poll or plan.task_zygote_socket)
    if command[1:2] == ["api-server"]:
        return plan.api_route_types_once
    return False
