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
  and the S3 endpoint after their supervisord was killed) is found by what the platform gave it when
  it started — never by what it names: a backup job copying the state directory, a shell in it or
  another platform at a path with the same suffix mention the same paths — and terminated (SIGTERM,
  then SIGKILL). Each ``up`` makes a ``Session``: a random token, put into supervisord's environment
  (``SESSION_ENV_VAR``, so every process it starts inherits it), and supervisord's pid and start time
  (every process it starts is in its session, ``getsid``, for good: a session is inherited and never
  joined, and it outlives its leader). A leftover carries that token in its environment, or is in
  that session; and it runs as this user (or as the user the platform runs PostgreSQL as): a process
  of another user is never signalled.

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
SESSION_ENV_VAR = "AIRFLOW_GITOPS_SESSION"  # the token of the `up` that started a process (inherited)


@dataclass(frozen=True)
class Session:
    """What marks the processes of one start of the platform (stored 0600 in the state directory)."""

    token: str
    root: tuple[int, int]  # (st_dev, st_ino) of the state directory: a copy of it is not this platform
    supervisord: tuple[int, float] | None = None  # its pid (= its session id) and psutil create_time

    @classmethod
    def new(cls, state_dir: Path) -> Session:
        import secrets

        st = os.stat(state_dir)
        return cls(secrets.token_hex(16), (st.st_dev, st.st_ino))

    def with_supervisord(self, pid: int) -> Session:
        import psutil

        return Session(self.token, self.root, (pid, psutil.Process(pid).create_time()))

    def to_json(self) -> str:
        import json

        return json.dumps({"token": self.token, "root": list(self.root), "supervisord": self.supervisord})

    @classmethod
    def from_json(cls, text: str | bytes, state_dir: Path) -> Session | None:
        """The session stored in ``state_dir``; None when unreadable, or written for another directory
        (the state directory was copied or restored: the processes it names are not ours)."""
        import json

        try:
            data = json.loads(text)
            token, root, sup = str(data["token"]), tuple(map(int, data["root"])), data.get("supervisord")
            sup = (int(sup[0]), float(sup[1])) if sup else None
            st = os.stat(state_dir)
        except (ValueError, KeyError, TypeError, IndexError, OSError):
            return None
        if len(token) < 16 or root != (st.st_dev, st.st_ino):
            return None
        return cls(token, root, sup)


@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str
    why: str  # what ties it to this platform
    command: str
    started: float = 0.0  # psutil create_time: tells a reused pid apart

    def __str__(self) -> str:
        return f"pid {self.pid} {self.name} ({self.why}): {self.command[:120]}"


def _session_id(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def leftovers(session: Session | None, uids: Iterable[int] = ()) -> list[Leftover]:
    """Live processes of the platform started as ``session`` (nothing without one).

    A process belongs to it when it runs as this user or as one in ``uids`` (the user PostgreSQL
    runs as, when we are root), and its environment has the session's token, or it is in the session
    of the session's supervisord (while that pid, if alive, is still the same supervisord), or its
    parent belongs to it (and it runs as one of these users, without a terminal). What it
    names on its command line and its working directory say nothing: a backup of the state directory
    names it too. Never this process or its ancestors, and never a process with a controlling terminal:
    the platform's processes have none (supervisord detaches), a user's shell does.
    """
    import psutil

    if session is None:
        return []
    allowed = {os.geteuid(), *uids}
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    leader = None
    if session.supervisord:
        pid, started = session.supervisord
        leader = pid
        try:
            if abs(psutil.Process(pid).create_time() - started) > 0.01:
                leader = None  # the pid is another process now: its session is not ours
        except psutil.NoSuchProcess:
            pass  # gone (killed): its session lives on in what it started
    candidates, children = {}, {}
    for proc in psutil.process_iter(["pid", "ppid", "name", "uids", "terminal", "status", "create_time"]):
        info = proc.info
        if info["pid"] in skip or info["status"] == psutil.STATUS_ZOMBIE or info["terminal"]:
            continue
        if info["uids"] is None or info["uids"].real not in allowed or info["uids"].effective not in allowed:
            continue  # another user's process: never ours to signal
        candidates[info["pid"]] = proc
        children.setdefault(info["ppid"], []).append(info["pid"])
    marked: dict[int, str] = {}
    for pid, proc in candidates.items():
        try:
            if proc.environ().get(SESSION_ENV_VAR) == session.token:
                marked[pid] = "session token"
                continue
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        # A process that sets its title (Airflow's do) zeroes the environment the kernel shows: its
        # session id still tells.
        if leader is not None and _session_id(pid) == leader:
            marked[pid] = "supervisord's session"
    # What a process of ours started is ours, even with a new session and title (PostgreSQL's
    # backends: setsid, then the title).
    todo = list(marked)
    while todo:
        parent = todo.pop()
        for pid in children.get(parent, ()):
            if pid not in marked:
                marked[pid] = f"started by {parent}"
                todo.append(pid)
    found = []
    for pid, why in marked.items():
        proc = candidates[pid]
        try:
            cmdline = proc.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found.append(Leftover(pid, proc.info["name"] or "?", why, " ".join(cmdline), proc.info["create_time"]))
    return sorted(found, key=lambda x: x.pid)


def terminate(found: list[Leftover], grace: float = 5.0) -> list[Leftover]:
    """SIGTERM each, SIGKILL what is still alive after ``grace`` seconds; returns the ones signalled."""
    import psutil

    procs, signalled = [], []
    for item in found:
        try:
            proc = psutil.Process(item.pid)
            if (item.started and proc.create_time() != item.started) or " ".join(proc.cmdline()) != item.command:
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


def sweep(session: Session | None, say: Callable[[str], None], uids: Iterable[int] = ()) -> list[Leftover]:
    """Terminate every leftover process of this platform's ``session``, saying which."""
    found = leftovers(session, uids)
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
