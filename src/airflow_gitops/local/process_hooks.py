"""No process outlives the component that started it.

Two halves:

* **In every Airflow process** (``install``, imported through the ``airflow_local_settings.py`` that
  ``up`` writes to ``AIRFLOW_HOME/config/``; Airflow imports that file in each of its processes):
  ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` for the process itself and, through
  ``os.register_at_fork``, for every child it forks (LocalExecutor workers, task processes, parsing
  processes, the trigger runner). When a parent dies — even by SIGKILL — the kernel kills its
  children. Without it, the scheduler's LocalExecutor workers survive a ``kill -9`` of the scheduler
  forever: they inherit the scheduler's SIGTERM handler, which does nothing in a child, and block on
  a queue whose write end they hold themselves.
  SIGKILL, not SIGTERM: an orphaned worker ignores SIGTERM (see above), and an orphaned task process
  can no longer report anything (it talks to Airflow only through its dead parent), so a graceful
  end buys nothing; the cost is that an operator's ``on_kill`` does not run in that case.
  Only forks from a process's main thread get the signal: the kernel sends it when the *thread* that
  forked the child ends, so a child forked from a short-lived thread would die early.

* **In the CLI** (``leftovers`` / ``sweep``, at ``down`` and before ``up`` starts anything): whatever
  survived anyway (a process started by ``subprocess``, which runs no fork hooks; PostgreSQL, MLflow
  and the S3 endpoint after their supervisord was killed) is found by what points at this state
  directory — ``AIRFLOW_HOME`` in its environment, a path in its command line, its working
  directory — and terminated (SIGTERM, then SIGKILL).

This module imports nothing of the package: it is loaded by every Airflow process and must stay cheap.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
PARENT_DEATH_SIGNAL = signal.SIGKILL

LOCAL_SETTINGS = '''\
"""Written by airflow-gitops at every `up` (airflow_gitops/local/process_hooks.py); edits are overwritten.

Airflow imports this file in each of its processes: every process, and every child it forks, is
killed by the kernel when its parent dies, so nothing outlives the component that started it.
"""

from airflow_gitops.local.process_hooks import install as _install

_install()

__all__: list[str] = []  # export nothing into airflow.settings
'''

_installed = False
_fork_parent: tuple[int, bool] | None = None  # (pid, forked from the main thread), set just before a fork


def set_parent_death_signal(sig: int = PARENT_DEATH_SIGNAL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) ends. Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _before_fork() -> None:
    global _fork_parent
    _fork_parent = (os.getpid(), threading.current_thread() is threading.main_thread())


def _after_fork_in_child() -> None:
    if _fork_parent is None or not _fork_parent[1]:
        return  # forked from a thread that may end before the child does: the sweep covers it
    set_parent_death_signal()
    if os.getppid() != _fork_parent[0]:
        # The parent died between fork() and prctl(): the kernel will not tell us any more.
        os.kill(os.getpid(), PARENT_DEATH_SIGNAL)


def install() -> None:
    """This process and every child it forks from its main thread die when their parent dies."""
    global _installed
    if _installed or not sys.platform.startswith("linux"):
        return
    _installed = True
    set_parent_death_signal()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def write_local_settings(airflow_home: Path) -> Path:
    """``AIRFLOW_HOME/config/airflow_local_settings.py`` (Airflow puts that folder on ``sys.path``)."""
    path = airflow_home / "config" / "airflow_local_settings.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != LOCAL_SETTINGS:
        path.write_text(LOCAL_SETTINGS)
    return path


# --- leftovers (run by the CLI) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str
    why: str  # what ties it to this platform
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} {self.name} ({self.why}): {self.command[:120]}"


def _under(path: str | None, roots: Iterable[str]) -> bool:
    return bool(path) and any(path == r or path.startswith(r + "/") for r in roots)


def _mentions(arg: str, roots: Iterable[str]) -> bool:
    return any(arg == r or arg.endswith("=" + r) or (r + "/") in arg for r in roots)


def leftovers(roots: Iterable[Path], airflow_home: Path) -> list[Leftover]:
    """Live processes of the platform whose state is under ``roots`` (the state directory, and the
    PostgreSQL data directory when it lives elsewhere).

    A process belongs to it when its environment has ``AIRFLOW_HOME`` = ``airflow_home``, an argument
    of its command line is a path under a root, or its working directory is under a root. Never this
    process or its ancestors, and never a process with a controlling terminal: the platform's
    processes have none (supervisord detaches), a user's ``tail -f .../scheduler.log`` or shell does.
    """
    import psutil

    real = sorted({os.path.realpath(r) for r in roots} | {str(Path(r).absolute()) for r in roots})
    home = {os.path.realpath(airflow_home), str(Path(airflow_home).absolute())}
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cwd", "environ", "terminal", "status"]):
        info = proc.info
        if info["pid"] in skip or info["status"] == psutil.STATUS_ZOMBIE or info["terminal"]:
            continue
        cmdline = info["cmdline"] or []
        why = None
        if (info["environ"] or {}).get("AIRFLOW_HOME") in home:
            why = "AIRFLOW_HOME"
        elif any(_mentions(arg, real) for arg in cmdline):
            why = "command line"
        elif _under(info["cwd"], real):
            why = "working directory"
        if why:
            found.append(Leftover(info["pid"], info["name"] or "?", why, " ".join(cmdline)))
    return found


def terminate(found: list[Leftover], grace: float = 5.0) -> list[Leftover]:
    """SIGTERM each, SIGKILL what is still alive after ``grace`` seconds; returns the ones signalled."""
    import psutil

    procs, signalled = [], []
    for item in found:
        try:
            proc = psutil.Process(item.pid)
            if " ".join(proc.cmdline()) != item.command:
                continue  # the pid was reused in between
            proc.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        procs.append(proc)
        signalled.append(item)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return signalled


def sweep(roots: Iterable[Path], airflow_home: Path, say: Callable[[str], None]) -> list[Leftover]:
    """Terminate every leftover process of this platform, saying which."""
    found = leftovers(list(roots), airflow_home)
    if found:
        say(f"Stopping {len(found)} leftover process(es) of this platform (from a crash or a killed supervisor):")
        for item in terminate(found):
            say(f"  killed {item}")
    return found


def clear_stale_pid_file(path: Path, owner_mark: str) -> bool:
    """Remove a pid file (PostgreSQL's ``postmaster.pid``) whose process is gone, or whose pid now
    belongs to a process that does not mention ``owner_mark`` (a reused pid after a power cut)."""
    import psutil

    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        if any(owner_mark in arg for arg in psutil.Process(pid).cmdline()):
            return False
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        return False
    path.unlink(missing_ok=True)
    return True
