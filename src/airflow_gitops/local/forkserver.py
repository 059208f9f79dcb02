"""Import Airflow once, fork its components from that process: ``python -m airflow_gitops.local.forkserver
SOCKET [MODULE...]`` (the server) and :func:`run_forked` (the client, in ``launch.py``).

Each of Airflow's four components (API server, scheduler, DAG processor, triggerer) used to import
the same ~1.7 CPU-s of Airflow, SQLAlchemy, pydantic & co. at every start: ~5 of the ~15 CPU-s a warm
``up`` costs on two cores (docs/performance.md, "Start-up"). The server imports it once (``MODULES``,
given by ``components.py``) and forks each component from there; the forks share those pages
copy-on-write.

supervisord still supervises every component: what it starts is the launcher (``launch.py``), which,
when its launch plan (``launch_plan.py``) names the server's socket, becomes a small client that

* sends the server its command, environment, working directory, nice value and umask, and its
  standard input, output and error (``SCM_RIGHTS``), so the component logs where it always did;
* forwards the signals supervisord sends it (stop, restart) to the component;
* exits as the component did: with its exit code, or killed by the same signal.

The server forks a child per request; the child takes the client's descriptors, directory,
environment, nice value and umask, a process group of its own (as supervisord gives its programs),
the client's command line as its title, and runs the command as the launch plan its environment names
says: Airflow's components in-process (``preload.run``), anything else by ``exec``. When a client goes
away (``kill -9``, or supervisord's SIGKILL after its stop timeout) the server kills its child's
process group; when the server dies its children get SIGKILL from the kernel (``process_hooks``:
parent-death signal), so no component outlives either. A request whose environment differs from the
server's (``DIGEST_ENV_VAR``: ``up`` rewrote the environment file since the server started) is
refused, and so is one from another user (``SO_PEERCRED``); the client then runs its component
itself, as before, and says so in its log, as it does when no server answers within
``CONNECT_WAIT_S``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from . import peer_socket

DIGEST_ENV_VAR = "AIRFLOW_GITOPS_ENV_DIGEST"  # sha256 of the environment file launch.py loaded
CONNECT_WAIT_S = 15.0  # the server binds its socket before it imports; a missing one gets this long
REPLY_WAIT_S = 300.0  # its imports run before it answers; on a loaded machine they can take a while
MAX_MESSAGE = 1 << 20
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOP_GRACE_S = 25.0  # the server's own stop: its children get SIGTERM, then SIGKILL after this


class Unavailable(Exception):
    """No fork for this request (the reason is the message): the client runs the command itself."""


def _say(text: str) -> None:
    print(f"airflow-gitops fork server: {text}", file=sys.stderr, flush=True)


def _send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


def _decode(data: bytes) -> dict | None:
    if not data:
        return None  # the other side closed
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("not an object")
    return message


# --- client -------------------------------------------------------------------------------------------
def _connect(path: str, wait: float, uid: int | None = None) -> socket.socket:
    """A connection to the server at ``path``, which must run as ``uid`` (default: our own user)."""
    try:
        return peer_socket.connect(path, wait, uid)
    except peer_socket.Unreachable as why:
        raise Unavailable(f"no fork server answers ({why})") from None


def ping(path: str, timeout: float = 2.0, uid: int | None = None) -> dict | None:
    """The server's pid and its children (client pid -> component pid), once it serves; else None.
    ``uid``: the user it must run as (default: ours)."""
    try:
        conn = _connect(path, 0, uid)
    except Unavailable:
        return None
    with conn:
        conn.settimeout(timeout)
        try:
            _send(conn, {"ping": True})
            reply = _decode(conn.recv(MAX_MESSAGE))
        except (OSError, ValueError):
            return None
    if not reply or "pong" not in reply:
        return None
    return {"pid": reply["pong"], "children": {int(k): v for k, v in reply.get("children", {}).items()}}


def _exit_like(code: int) -> None:
    """Exit as the component did: ``code`` as ``os.waitstatus_to_exitcode`` gives it."""
    if code < 0:
        sig = -code
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        time.sleep(1)
        os._exit(128 + sig)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_forked(path: str, command: list[str], connect_wait: float = CONNECT_WAIT_S) -> None:
    """Have the server at ``path`` run ``command`` as a fork, then exit as it does (never returns).
    Raises :class:`Unavailable` before anything ran (the caller then runs ``command`` itself)."""
    from .process_hooks import set_parent_death_signal

    set_parent_death_signal()  # gone with supervisord (the server then kills the fork)
    conn = _connect(path, connect_wait)
    mask = os.umask(0)
    os.umask(mask)
    request = {
        "command": command,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "nice": os.nice(0),
        "umask": mask,
        "title": " ".join(getattr(sys, "orig_argv", sys.argv)),
    }
    conn.settimeout(REPLY_WAIT_S)
    try:
        _send(conn, request, [0, 1, 2])
        reply = _decode(conn.recv(MAX_MESSAGE))
    except (OSError, ValueError) as err:
        raise Unavailable(f"the fork server did not answer ({err})") from None
    if reply is None:
        raise Unavailable("the fork server closed the connection")
    if "refused" in reply:
        raise Unavailable(f"the fork server refused: {reply['refused']}")
    pid = int(reply["pid"])
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None  # already gone: its exit status follows

    def forward(sig, _frame):
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    conn.settimeout(None)
    try:
        message = _decode(conn.recv(MAX_MESSAGE))
    except (OSError, ValueError):
        message = None
    if message is None or "exit" not in message:
        # The server is gone; the kernel killed its children with it (parent-death signal).
        what = " ".join(command[:3])
        print(f"airflow-gitops: the fork server ended; pid {pid} ({what}) ended with it", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    _exit_like(int(message["exit"]))


# --- server -------------------------------------------------------------------------------------------
@dataclass
class _Client:
    conn: socket.socket
    peer: int  # its pid
    child: int | None = None
    pidfd: int | None = None
    fds: list[int] = field(default_factory=list)


def _listen(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a server that died (supervisord runs one at a time)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


_peer = peer_socket.peer


class Server:
    MAX_FDS = 3  # a request's descriptors: standard input, output and error

    def __init__(self, listener: socket.socket, allowed_uid: int | None = None):
        self.listener = listener
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid  # whose requests it takes
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}  # conn fd -> client
        self.by_pidfd: dict[int, _Client] = {}
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def serve(self) -> tuple[dict, list[int]]:
        """Answer requests until stopped (then exit); returns only in a forked child: its request and
        descriptors."""
        signal.set_wakeup_fd(self.wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # handled in the loop (wake-up fd)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        stop_deadline = None
        while True:
            if self.stopping and not self.by_pidfd:
                _say("stopped")
                sys.exit(0)
            if stop_deadline and time.monotonic() > stop_deadline:
                for client in self.by_pidfd.values():
                    self._kill(client, signal.SIGKILL)
                stop_deadline = None
            for key, _ in self.selector.select(timeout=1.0):
                what = key.data
                if what == "accept":
                    self._accept()
                elif what == "signal":
                    self.wake_r.recv(64)  # SIGTERM, SIGINT or SIGHUP: the only ones handled
                    if not self.stopping:
                        self._stop()
                        stop_deadline = time.monotonic() + STOP_GRACE_S
                elif what == "client":
                    forked = self._request(self.clients[key.fd])
                    if forked is not None:
                        return forked
                else:
                    self._reap(what)

    def _stop(self) -> None:
        """Take no more requests; ask the forks to stop (the loop exits once they have)."""
        self.stopping = True
        self.selector.unregister(self.listener)
        path = self.listener.getsockname()
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)  # clients find no server (rather than a refusing socket)
        for client in self.by_pidfd.values():
            self._kill(client, signal.SIGTERM)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        peer, uid = _peer(conn)
        if uid != self.allowed_uid:
            _say(f"refused a connection from pid {peer} of user {uid}")
            conn.close()
            return
        client = _Client(conn, peer)
        self.clients[conn.fileno()] = client
        self.selector.register(conn, selectors.EVENT_READ, "client")

    def _forget(self, client: _Client) -> None:
        """Stop listening to ``client`` (its fork, if any, is still reaped: :meth:`_reap`)."""
        if client.conn.fileno() in self.clients:
            del self.clients[client.conn.fileno()]
            self.selector.unregister(client.conn)

    def _drop(self, client: _Client) -> None:
        self._forget(client)
        client.conn.close()
        for fd in client.fds:
            os.close(fd)
        client.fds = []

    def _kill(self, client: _Client, sig: int) -> None:
        try:
            os.killpg(client.child, sig)  # its own process group: the component and what it forked
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(client.child, sig)
            except ProcessLookupError:
                pass

    def _request(self, client: _Client) -> tuple[dict, list[int]] | None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(client.conn, MAX_MESSAGE, self.MAX_FDS)
        except OSError as err:
            data, fds = b"", []
            _say(f"unreadable request from pid {client.peer}: {err}")
        try:
            message = _decode(data)
        except (ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep
            for fd in fds:
                os.close(fd)
            why = f"the request is not a JSON object ({type(err).__name__})"
            _say(f"refused a request from pid {client.peer}: {why}")
            self._answer(client, {"refused": why})
            if client.child is None:
                self._drop(client)
            return None
        if message is None:  # the client went away
            for fd in fds:
                os.close(fd)
            if client.child is not None and client.pidfd in self.by_pidfd:
                _say(f"client pid {client.peer} is gone: killing pid {client.child}")
                self._kill(client, signal.SIGKILL)
                self._forget(client)
            else:
                self._drop(client)
            return None
        if message.get("ping"):
            for fd in fds:
                os.close(fd)
            children = {c.peer: c.child for c in self.clients.values() if c.child}
            self._answer(client, {"pong": os.getpid(), "children": children})
            return None
        why = self._refusal(message, fds)
        if why or client.child is not None:
            for fd in fds:
                os.close(fd)
            self._answer(client, {"refused": why or "one command per connection"})
            self._drop(client)
            return None
        client.fds = fds
        return self._fork(client, message)

    def _refusal(self, message: dict, fds: list[int]) -> str | None:
        command = message.get("command")
        if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
            return "no command"
        if len(fds) != 3:
            return "no standard input, output and error"
        env = message.get("env")
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            return "env is not an object of text values"
        for key, kind in (("cwd", str), ("title", str), ("umask", int), ("nice", int)):
            if not isinstance(message.get(key), kind) or isinstance(message.get(key), bool):
                return f"{key} is not {'text' if kind is str else 'a whole number'}"
        if env.get(DIGEST_ENV_VAR) != os.environ.get(DIGEST_ENV_VAR):
            return (
                "its environment differs from the one the fork server imported Airflow with "
                "(the environment file changed since it started; `airflow-gitops down` and `up` restart it)"
            )
        if self.stopping:
            return "the fork server is stopping"
        return None

    def _describe(self, message: dict) -> str:
        return " ".join(message["command"][1:3])

    def _answer(self, client: _Client, message: dict) -> bool:
        try:
            _send(client.conn, message)
            return True
        except OSError:
            return False

    def _fork(self, client: _Client, message: dict) -> tuple[dict, list[int]] | None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as err:
            self._answer(client, {"refused": f"fork failed: {err}"})
            self._drop(client)
            return None
        if pid == 0:
            return self._in_child(client, message)
        client.child = pid
        for fd in client.fds:
            os.close(fd)
        client.fds = []
        client.pidfd = os.pidfd_open(pid)
        self.by_pidfd[client.pidfd] = client
        self.selector.register(client.pidfd, selectors.EVENT_READ, client)
        _say(f"pid {pid}: {self._describe(message)} (for pid {client.peer})")
        if not self._answer(client, {"pid": pid}):  # the client went away meanwhile
            self._kill(client, signal.SIGKILL)
        return None

    def _in_child(self, client: _Client, message: dict) -> tuple[dict, list[int]]:
        """In the fork: drop the server's state, keep this request's descriptors."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        fds = client.fds
        self.selector.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()
        for other in self.clients.values():
            other.conn.close()
        for pidfd in self.by_pidfd:
            os.close(pidfd)
        return message, fds

    def _reap(self, client: _Client) -> None:
        try:
            _, status = os.waitpid(client.child, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = 1
        self.selector.unregister(client.pidfd)
        del self.by_pidfd[client.pidfd]
        os.close(client.pidfd)
        _say(f"pid {client.child} exited ({'signal ' + str(-code) if code < 0 else 'code ' + str(code)})")
        self._answer(client, {"exit": code})
        self._drop(client)


def _become(message: dict, fds: list[int]) -> None:
    """The forked child takes the client's place: its descriptors, directory, environment, nice value."""
    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    os.chdir(message["cwd"])
    os.umask(int(message["umask"]))
    delta = int(message["nice"]) - os.nice(0)
    if delta:
        try:
            os.nice(delta)
        except OSError:
            pass
    try:  # before the environment changes: setproctitle needs the original one to find room
        import setproctitle

        setproctitle.setproctitle(message["title"])
    except ImportError:
        pass
    os.environ.clear()
    os.environ.update(message["env"])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m airflow_gitops.local.forkserver SOCKET [MODULE...]")
    from . import process_hooks

    listener = _listen(argv[0])  # first: clients started with us wait on it while we import
    process_hooks.install()  # our children die with us
    started, cpu = time.monotonic(), _cpu()
    for module in argv[1:]:
        importlib.import_module(module)
    gc.freeze()  # the children's collections leave the shared objects (and their pages) alone
    _say(
        f"imported {len(argv) - 1} modules ({len(sys.modules)} in all) in {time.monotonic() - started:.1f} s "
        f"({_cpu() - cpu:.1f} CPU-s); serving on {argv[0]}"
    )
    message, fds = Server(listener).serve()
    _become(message, fds)
    from . import preload

    preload.start(message["command"])  # with the launch plan the client's environment names


if __name__ == "__main__":
    main(sys.argv[1:])
