"""Task and DAG-parse processes are forked by the task user's zygote (``local/zygote.py``), not by the
component that holds the platform's keys (see :func:`patch_task_zygote`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from pathlib import Path

import psutil

from .guard import ORIGINAL, PATCHED, Guard

SUPERVISOR = "airflow.sdk.execution_time.supervisor"
GUARD = Guard(
    "task_zygote",
    "task and DAG-parse processes run as local.task_user, forked by its zygote",
    "apache-airflow-task-sdk",
    "Airflow's task SDK",
    {
        "1.3.2": {
            # replaced for the two targets: its body, with the fork handed to the zygote
            f"{SUPERVISOR}:WatchedSubprocess.start": "23fbedd40c23122785ce8fc93f8ae79d8de4339c397c6f7abd76e2c0b791f1ef",
            # wrapped: the bundle version checked out (as root) before the task starts
            f"{SUPERVISOR}:ActivitySubprocess.start": (
                "8200be25606c41e473426a6841e7dfec3470027874d81adc125c05c9d132629a"
            ),
            # relied on: what the zygote's child runs on the handed-over sockets
            f"{SUPERVISOR}:_fork_main": "a713014dacd0158b9fe818505f960d11957e7f944f4ff3df7f2ffad01b5a3f58",
            f"{SUPERVISOR}:WatchedSubprocess._register_pipe_readers": (
                "836b80fba21be6ddb81907964dc61c5c253f7e0c3f7b03c0046accdeada8c915"
            ),
            f"{SUPERVISOR}:ProcessTracker": "732adb779ff16096f8fbfae7edd70bd963b2d5aa018786b090ae89f0c2e3f8e5",
            # wrapped: the bundle's worktree made readable to the task user before a parse
            "airflow.dag_processing.processor:DagFileProcessorProcess.start": (
                "7e651d51c0cfd378e286d29b6f22f0ec3a1fcfc8e6f8de13e83372a4d4fa665c"
            ),
            # relied on: the task runner takes the bundle from DagBundlesManager and only initialize()s it
            "airflow.sdk.execution_time.task_runner:parse": (
                "eb3f92e8d263ade926e1c8354b30c87c04f7f0ab70a24410103f022c0f2d4874"
            ),
        }
    },
)
CONNECT_WAIT_S = 30.0  # the zygote binds before it imports; at a cold `up` it may still be starting
REPLY_WAIT_S = 300.0  # its first task request imports local.preload's packages first
MAX_MESSAGE = 1 << 16


class ZygoteUnavailable(RuntimeError):
    """The zygote did not take the request: the task or parse fails with this (never runs as root)."""


# --- the task user's read access ----------------------------------------------------------------------
def share_tree(root: Path, gid: int) -> int:
    """``root`` and everything under it except ``.git`` folders: group ``gid``, readable (and, for folders
    and executables, enterable) by it, never writable by it. Returns how many entries changed. Only root
    writes these trees (the task user cannot), so no link swapped in meanwhile redirects a change."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        changed += _share(dirpath, gid)
        for name in filenames:
            changed += _share(os.path.join(dirpath, name), gid)
    return changed


def _share(path: str, gid: int) -> int:
    st = os.lstat(path)
    changed = 0
    if st.st_gid != gid:
        os.lchown(path, -1, gid)
        changed = 1
    if stat.S_ISLNK(st.st_mode):
        return changed
    mode = stat.S_IMODE(st.st_mode)
    want = (mode & ~0o020) | 0o040 | (0o010 if stat.S_ISDIR(st.st_mode) or mode & 0o100 else 0)
    if want != mode:
        os.chmod(path, want)
        changed = 1
    return changed


def allow_traverse(path: Path, gid: int) -> None:
    """Group ``gid`` may pass through the folder ``path`` (to names it knows), not list or change it;
    nobody else may enter it."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(str(path))
    if st.st_gid != gid:
        os.lchown(path, -1, gid)
    mode = stat.S_IMODE(st.st_mode)
    want = (mode & ~0o067) | 0o010
    if want != mode:
        os.chmod(path, want)


def _share_bundle_path(path: Path, storage_root: Path, gid: int) -> None:
    """The worktree at ``path`` (under the bundle storage) readable to the task user, and the folders
    from the storage root down to it passable."""
    path = Path(path)
    for folder in [storage_root, *reversed([p for p in path.parents if storage_root in p.parents])]:
        allow_traverse(folder, gid)
    share_tree(path, gid)


# --- the supervisor's side ----------------------------------------------------------------------------
def _connect(path: str, uid: int) -> socket.socket:
    """A connection to the zygote: waits for it to listen, trusts it only as the task user."""
    from .. import peer_socket

    try:
        return peer_socket.connect(path, CONNECT_WAIT_S, uid)
    except peer_socket.Unreachable as why:
        raise ZygoteUnavailable(
            f"the task user's zygote is not usable: {why}; see logs/task-zygote.log (`airflow-gitops status`)"
        ) from None


class ZygoteTracker:
    """Airflow's ``ProcessTracker`` for a child of the zygote: signals by pidfd; the exit status comes
    from the zygote (the child's parent) on the request's connection."""

    ProcessNotFound = psutil.NoSuchProcess
    TimeoutExpired = psutil.TimeoutExpired

    def __init__(self, conn: socket.socket, pid: int):
        self._conn, self._pid, self._code = conn, pid, None
        self.on_exit = None  # called once the exit is known (the supervisor's bundle version lock)
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None

    @property
    def pid(self) -> int:
        return self._pid

    def send_signal(self, s: signal.Signals) -> None:
        if self._code is not None or self._pidfd is None:
            raise self.ProcessNotFound(self._pid)
        try:
            signal.pidfd_send_signal(self._pidfd, s)
        except ProcessLookupError:
            raise self.ProcessNotFound(self._pid) from None

    def wait(self, timeout: float | None) -> int:
        if self._code is None:
            self._conn.settimeout(timeout)
            try:
                data = self._conn.recv(MAX_MESSAGE)
            except (TimeoutError, BlockingIOError):
                raise self.TimeoutExpired(timeout, self._pid) from None
            except OSError:
                data = b""
            try:
                message = json.loads(data) if data else {}
            except ValueError:
                message = {}
            # No answer: the zygote is gone, and the kernel killed its children with it (parent-death signal).
            self._code = int(message["exit"]) if isinstance(message.get("exit"), int) else -signal.SIGKILL
            self._conn.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if self.on_exit is not None:
                self.on_exit()
        return self._code


def _handoff(cls, target_name: str, zygote: dict, logger, new_process_group: bool, constructor_kwargs: dict):
    """WatchedSubprocess.start's work, with the zygote forking the child (Airflow's own body otherwise)."""
    import structlog
    from airflow.sdk.execution_time.supervisor import socketpair

    child_stdout, read_stdout = socketpair()
    child_stderr, read_stderr = socketpair()
    child_requests, read_requests = socketpair()
    child_logs, read_logs = socketpair()
    children = (child_requests, child_stdout, child_stderr, child_logs)
    conn = None
    try:
        conn = _connect(zygote["socket"], zygote["uid"])
        conn.settimeout(REPLY_WAIT_S)
        request = json.dumps({"target": target_name, "title": f"airflow {target_name}"}).encode()
        socket.send_fds(conn, [request], [s.fileno() for s in children])
        data = conn.recv(MAX_MESSAGE)
        reply = json.loads(data) if data else {}
        if not isinstance(reply.get("pid"), int):
            raise ZygoteUnavailable(f"the task user's zygote refused: {reply.get('refused', 'no answer')}")
    except (OSError, ValueError, ZygoteUnavailable) as err:
        for s in (conn, *children, read_stdout, read_stderr, read_requests, read_logs):
            if s is not None:
                s.close()
        if isinstance(err, ZygoteUnavailable):
            raise
        raise ZygoteUnavailable(f"the task user's zygote did not answer: {err}") from None
    conn.settimeout(None)
    for s in children:
        s.close()
    pid = reply["pid"]
    logger = logger or structlog.get_logger(logger_name="task").bind()
    proc = cls(
        pid=pid,
        stdin=read_requests,
        process=ZygoteTracker(conn, pid),
        process_log=logger,
        start_time=time.monotonic(),
        new_process_group=new_process_group,
        **constructor_kwargs,
    )
    proc._register_pipe_readers(read_stdout, read_stderr, read_requests, read_logs, data={})
    return proc


def _replace_classmethod(owner, name: str, make) -> None:
    original = owner.__dict__[name].__func__
    patched = make(original)
    setattr(patched, PATCHED, True)
    setattr(patched, ORIGINAL, original)
    setattr(owner, name, classmethod(patched))


def patch_task_zygote(socket_path: str, uid: int, gid: int) -> bool:
    """Have the zygote at ``socket_path`` (run by ``uid``) fork every task and DAG-parse process of this
    component, instead of ``os.fork`` here.

    Airflow's supervisor (``WatchedSubprocess.start``) forks its child from the component: the child
    inherits the component's memory (its configuration: database URL, Fernet key, JWT secret) and its
    user (root). Here, for the task runner and the DAG file parser only, the supervisor makes the same
    four socket pairs, hands the child ends to the zygote, which forks the child as the task user
    (``zygote.py``), and tracks it through :class:`ZygoteTracker`; the rest of ``start`` is Airflow's.
    Before a task, the bundle version is checked out here (root, with ``GitDagBundle`` as Airflow's
    task runner would) and made readable to group ``gid``, and the version's lock (which keeps Airflow's
    stale-version cleanup off it) is held here until the task exits; before a parse, the worktree
    parsed is made readable. A zygote that does not answer fails that task or parse - it never falls
    back to forking here as root.

    Guarded (:data:`GUARD`); False (nothing changed) when the guard is off or it is applied already.
    The caller must then refuse to run tasks (``preload.run``): running them here would run DAG code as
    root with the keys.
    """
    if not GUARD.allows():
        return False
    from airflow.dag_processing.bundles.base import get_bundle_storage_root_path
    from airflow.dag_processing.processor import DagFileProcessorProcess, _parse_file_entrypoint
    from airflow.sdk.execution_time import supervisor

    WatchedSubprocess, ActivitySubprocess = supervisor.WatchedSubprocess, supervisor.ActivitySubprocess
    if getattr(WatchedSubprocess.__dict__["start"].__func__, PATCHED, False):
        return False
    zygote = {"socket": socket_path, "uid": uid}
    targets = {supervisor._subprocess_main: "task", _parse_file_entrypoint: "parse"}
    storage_root = get_bundle_storage_root_path()

    def make_start(start):
        def start_by_zygote(
            cls, *, target=supervisor._subprocess_main, logger=None, use_exec=False, new_process_group=False, **kw
        ):
            name = targets.get(target)
            if name is None:  # another child (the triggerer's runner): Airflow's fork
                return start(
                    cls, target=target, logger=logger, use_exec=use_exec, new_process_group=new_process_group, **kw
                )
            return _handoff(cls, name, zygote, logger, new_process_group, kw)

        return start_by_zygote

    def make_activity_start(start):
        def start_prepared(cls, *, what, dag_rel_path, bundle_info, client, target=supervisor._subprocess_main, **kw):
            lock = None
            if target is supervisor._subprocess_main:
                lock = _prepare_version(bundle_info, storage_root, gid)
            try:
                proc = start(
                    cls,
                    what=what,
                    dag_rel_path=dag_rel_path,
                    bundle_info=bundle_info,
                    client=client,
                    target=target,
                    **kw,
                )
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
            if lock is not None:
                proc._process.on_exit = lock.release
            return proc

        return start_prepared

    def make_parse_start(start):
        def start_shared(cls, *, bundle_path, **kw):
            _share_bundle_path(Path(bundle_path), storage_root, gid)
            return start(cls, bundle_path=bundle_path, **kw)

        return start_shared

    _replace_classmethod(WatchedSubprocess, "start", make_start)
    _replace_classmethod(ActivitySubprocess, "start", make_activity_start)
    _replace_classmethod(DagFileProcessorProcess, "start", make_parse_start)
    return GUARD.applied()


def _prepare_version(bundle_info, storage_root: Path, gid: int):
    """Check the task's bundle version out as the task runner would (GitDagBundle, here as root), make it
    readable to the task user, and hold its version lock; returns the lock (release it at the exit)."""
    from airflow.dag_processing.bundles.base import BundleVersionLock
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    bundle = DagBundlesManager().get_bundle(name=bundle_info.name, version=bundle_info.version)
    bundle.initialize()
    lock = BundleVersionLock(bundle_name=bundle.name, bundle_version=bundle.version)
    lock.acquire()
    try:
        _share_bundle_path(Path(getattr(bundle, "repo_path", bundle.path)), storage_root, gid)
    except BaseException:
        lock.release()
        raise
    return lock
