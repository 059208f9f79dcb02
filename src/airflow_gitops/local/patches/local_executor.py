"""LocalExecutor forks its workers at the first task, right after a callback (the preload), and keeps
what was preloaded frozen out of the scheduler's collector (see :func:`patch_local_executor`)."""

from __future__ import annotations

import gc
from collections.abc import Callable

from .guard import PATCHED, Guard, wrap

GUARD = Guard(
    "local_executor",
    "LocalExecutor forks its workers at the first task, after the preload",
    "apache-airflow-core",
    "Airflow",
    {
        "3.3.2": {
            "airflow.executors.local_executor:LocalExecutor.start": (
                "d2883ff9fc1d1aeb9e36df02f764a210c59dcdbd55f7a66229a2097883a1ba37"
            ),
            "airflow.executors.local_executor:LocalExecutor._spawn_workers_with_gc_freeze": (
                "acd91f4c0f54cf14062169d229bf6427f4c88a3c1ccc7feac874111d21cd0457"
            ),
            # relied on: it forks the workers start() did not, when the first task is queued
            "airflow.executors.local_executor:LocalExecutor._check_workers": (
                "106dc29bd7f26708669819602237846e5675cd3b73552fe66c55ca0388a49517"
            ),
        }
    },
)


def patch_local_executor(before_first_fork: Callable[[], None]) -> bool:
    """Call ``before_first_fork`` in LocalExecutor right before it forks its workers, and fork them at the
    first task.

    Airflow forks ``[core] parallelism`` workers in ``LocalExecutor.start``, i.e. while the platform is
    starting. Here ``start`` forks none; ``_check_workers`` forks them when the first task is queued
    (Airflow's own path for replacing dead workers), and right before that ``before_first_fork`` runs
    (the preload). So the ~4 CPU-s of imports stay out of ``airflow-gitops up`` (where seven processes
    already compete for two cores), and a platform that runs no task does not hold the libraries
    (~210 MiB PSS); the first task after a start waits for the import once instead.

    ``LocalExecutor._spawn_workers_with_gc_freeze`` calls ``gc.freeze()`` before forking and
    ``gc.unfreeze()`` after, which hands every preloaded object back to the scheduler's collector; its
    full collections then write to those objects' pages, copying them away from the workers that share
    them (measured: scheduler PSS 386 -> 562 MiB within 25 idle minutes). Freezing again after the fork
    keeps them shared.

    Guarded (:data:`GUARD`); returns False and changes nothing when the guard is off or it is applied already.
    """
    if not GUARD.allows():
        return False
    from airflow.executors.local_executor import LocalExecutor

    if getattr(LocalExecutor.start, PATCHED, False):
        return False
    state = {"done": False, "starting": False}

    def make_start(start):
        def patched_start(self):
            state["starting"] = True
            try:
                return start(self)
            finally:
                state["starting"] = False

        return patched_start

    def make_spawn(spawn):
        def patched_spawn(self, spawn_number):
            if state["starting"]:
                return None  # at the first task instead (_check_workers)
            if not state["done"]:
                state["done"] = True
                before_first_fork()
            try:
                return spawn(self, spawn_number)
            finally:
                gc.freeze()

        return patched_spawn

    wrap(LocalExecutor, "start", make_start)
    wrap(LocalExecutor, "_spawn_workers_with_gc_freeze", make_spawn)
    return GUARD.applied()
