"""The task user's zygote: ``python -m airflow_gitops.local.zygote SOCKET PLATFORM_UID [MODULE...]``.

When ``up`` runs as root, DAG code - a task's, and a DAG file's top level while the DAG processor parses
it - runs as a user of its own (``local.task_user``), in processes forked from this one, which runs as
that user from its first instruction (``launch.py --user`` drops root before it execs Python) and never
read the platform's configuration: its environment is the task environment (``airflow_env.task_env``),
its ``AIRFLOW_HOME`` the task user's own folder, so no fork of it holds the metadata database's URL,
the Fernet key or the JWT secret, in a file it can open or in its memory.

The components that supervise those processes (the scheduler's LocalExecutor workers, the DAG
processor) do not fork them any more (``patches/task_zygote``): they connect here, hand over the four
sockets Airflow's supervisor talks to its child through (requests, stdout, stderr, structured logs,
``SCM_RIGHTS``), and this server forks a child that runs Airflow's own child entry point
(``supervisor._fork_main``) on them with the target named in the request: the task runner, or the DAG
file parser. Everything else - the supervisor protocol, heartbeats, logs, Connections and Variables
through the API server - is Airflow's, unchanged. The supervisor learns the child's exit from the
connection (the server is its parent); when the supervisor goes away, the server kills the child.

Only the platform's user may connect (``SO_PEERCRED``); requests name one of :data:`TARGETS`, never code.
The server is :class:`forkserver.Server` with those rules. The listed modules are imported before it
serves (Airflow's task and parse modules); ``local.preload``'s packages at the first task, before that
task is forked, so ``up`` does not wait for them (as the scheduler did before, ``preload.py``).
"""

from __future__ import annotations

import gc
import importlib
import os
import socket
import sys
import time

from . import forkserver

# What a request may run: its name -> "module:function", Airflow's entry points of the supervised child.
TARGETS = {
    "task": "airflow.sdk.execution_time.supervisor:_subprocess_main",
    "parse": "airflow.dag_processing.processor:_parse_file_entrypoint",
}
PRELOAD_AT_FIRST_TASK_ENV = "AIRFLOW_GITOPS_TASK_PRELOAD"  # comma-separated modules (local.preload's)


def _say(text: str) -> None:
    print(f"airflow-gitops zygote: {text}", file=sys.stderr, flush=True)


class ZygoteServer(forkserver.Server):
    MAX_FDS = 4  # Airflow's supervisor sockets: requests, stdout, stderr, logs

    def __init__(self, listener: socket.socket, platform_uid: int, at_first_task: list[str]):
        super().__init__(listener, allowed_uid=platform_uid)
        self.at_first_task = at_first_task

    def _refusal(self, message: dict, fds: list[int]) -> str | None:
        if message.get("target") not in TARGETS:
            return f"target is not one of {', '.join(TARGETS)}"
        if len(fds) != self.MAX_FDS:
            return f"{len(fds)} descriptors, not the supervisor's {self.MAX_FDS} sockets"
        if not isinstance(message.get("title"), str):
            return "title is not text"
        if self.stopping:
            return "the zygote is stopping"
        return None

    def _describe(self, message: dict) -> str:
        return message["title"]

    def _fork(self, client, message: dict):
        if message["target"] == "task" and self.at_first_task:
            modules, self.at_first_task = self.at_first_task, []
            from . import preload

            ok, seconds = preload.preload(modules)
            _say(f"preloaded {ok}/{len(modules)} modules for tasks in {seconds:.1f} s")
        return super()._fork(client, message)


def _run_child(message: dict, fds: list[int]) -> None:
    """In the fork: Airflow's child entry point on the supervisor's sockets (never returns)."""
    os.setpgid(0, 0)  # a group of its own, as Airflow gives a task (the supervisor signals the group)
    try:
        import setproctitle

        setproctitle.setproctitle(message["title"])
    except ImportError:
        pass
    module, _, name = TARGETS[message["target"]].partition(":")
    target = getattr(importlib.import_module(module), name)
    from airflow.sdk.execution_time import supervisor

    requests, stdout, stderr = (socket.socket(fileno=fd) for fd in fds[:3])
    supervisor._fork_main(requests, stdout, stderr, fds[3], target)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[1].isdigit():
        sys.exit("usage: python -m airflow_gitops.local.zygote SOCKET PLATFORM_UID [MODULE...]")
    if os.geteuid() == 0:
        sys.exit("airflow-gitops zygote: refusing to run as root (it runs DAG code; launch.py --user drops root)")
    from . import preload, process_hooks

    listener = forkserver._listen(argv[0])  # first: a supervisor started meanwhile waits on it
    process_hooks.install()  # our children die with us (set after the user change, which clears it)
    started = time.monotonic()
    ok, _ = preload.preload(list(argv[2:]))
    at_first_task = [m for m in os.environ.get(PRELOAD_AT_FIRST_TASK_ENV, "").split(",") if m]
    gc.freeze()
    _say(
        f"uid {os.getuid()}: imported {ok}/{len(argv) - 2} modules in {time.monotonic() - started:.1f} s; "
        f"serving uid {argv[1]} on {argv[0]}"
    )
    message, fds = ZygoteServer(listener, int(argv[1]), at_first_task).serve()
    _run_child(message, fds)


if __name__ == "__main__":
    main(sys.argv[1:])
