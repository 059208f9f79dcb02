"""The DAG processor collects a finished parse at once (:func:`patch_dag_processor_poll`)."""

from __future__ import annotations

from .guard import Guard, wrap

GUARD = Guard(
    "dag_processor_poll",
    "the DAG processor collects a finished parse at once",
    "apache-airflow-core",
    "Airflow",
    {
        "3.3.2": {
            "airflow.dag_processing.manager:DagFileProcessorManager._service_processor_sockets": (
                "2a827812023a751bd7aa777fef835718de721920f5713275f8f8beaddd675b39"
            ),
            # relied on: it waits on the sockets for up to 1 - loop_duration seconds
            "airflow.dag_processing.manager:DagFileProcessorManager._run_parsing_loop": (
                "9d398c79f91472c881afc7ec63e88dbee3eb2bd5c52738bc401fa825d056924e"
            ),
            # relied on: a processor is done when it has exited and has no open sockets
            "airflow.dag_processing.processor:DagFileProcessorProcess.is_ready": (
                "2e43a6cfcb8bad779e2f5956544e93a2bb0ffb55e6f2f7eb007fdffe7bb21317"
            ),
        }
    },
)


def patch_dag_processor_poll() -> bool:
    """Let Airflow's DAG processor collect a finished parse at once instead of up to 1 s later.

    ``DagFileProcessorManager._run_parsing_loop`` waits on its processors' sockets for up to
    ``1 - loop_duration`` seconds. A parse process closes its sockets (EOF wakes the loop) a moment
    before the kernel lets it be reaped, so ``is_ready`` is often still False in that iteration and
    the result - and the start of the next file - waits out the rest of the second: with
    ``parsing_processes`` 1, up to ~1 s per file. Here the wait is cut to 10 ms while some processor
    has closed all its sockets but not been reaped yet. Guarded (:data:`GUARD`); returns False and
    changes nothing when the guard is off or it is applied already.
    """
    if not GUARD.allows():
        return False
    from airflow.dag_processing.manager import DagFileProcessorManager

    def make(original):
        def _service_processor_sockets(self, timeout=1.0):
            procs = getattr(self, "_processors", {})
            if procs and any(not getattr(p, "_open_sockets", True) for p in procs.values()):
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            return original(self, timeout=timeout)

        return _service_processor_sockets

    return wrap(DagFileProcessorManager, "_service_processor_sockets", make) and GUARD.applied()
