"""The scheduler sleeps briefly between idle loops only while it matters (:func:`patch_scheduler_busy_sleep`)."""

from __future__ import annotations

import time

from .guard import Guard, wrap

GUARD = Guard(
    "scheduler_sleep",
    "short idle sleep of the scheduler while a Dag run is active or after a push",
    "apache-airflow-core",
    "Airflow",
    {
        "3.3.2": {
            "airflow.jobs.scheduler_job_runner:SchedulerJobRunner._do_scheduling": (
                "abd02da36e8915df49dd4211f28f921190922f9ab5f81aa1cfe346b6353ee685"
            ),
            # relied on: it sleeps self._scheduler_idle_sleep_time after a loop that changed nothing
            "airflow.jobs.scheduler_job_runner:SchedulerJobRunner._run_scheduler_loop": (
                "65995790816875ac005ab7818f4b7c3716f88a49f084acc81e450e2532414e6f"
            ),
        }
    },
)


def patch_scheduler_busy_sleep(busy: float, window: float = 60.0) -> bool:
    """Sleep ``busy`` seconds between idle scheduler loops while a Dag run is queued or running, and for
    ``window`` seconds after a DAG bundle moved to a new version (a push: the run a user triggers next
    is picked up within ``busy`` instead of up to ``[scheduler] scheduler_idle_sleep_time``).

    Wraps ``SchedulerJobRunner._do_scheduling``: after each call, two small queries (active runs, bundle
    versions) decide the next idle sleep. (Bundle versions are compared as a mapping: PostgreSQL returns
    the rows in a different order after each refresh updates them, which made every loop look like a
    push.) Guarded (:data:`GUARD`); returns False and changes nothing when the guard is off or it is
    applied already.
    """
    if not GUARD.allows():
        return False
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

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

    return wrap(SchedulerJobRunner, "_do_scheduling", make) and GUARD.applied()
