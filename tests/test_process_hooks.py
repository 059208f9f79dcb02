"""process_hooks without a platform: the parent-death signal, finding and ending leftovers, stale pid files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from airflow_gitops.local import process_hooks as hooks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

# A parent that forks a sleeping child, prints the child's pid, then waits to be killed.
PARENT = """
import os, sys, time
if sys.argv[1] == "install":
    from airflow_gitops.local.process_hooks import install
    install()
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["install", "plain"])
def test_a_forked_child_dies_with_its_parent_only_with_the_hook(mode):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        assert _gone(child, 5) == (mode == "install")
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]  # extra arguments are ignored


def _start(args, **kw) -> subprocess.Popen:
    # start_new_session: no controlling terminal, like the platform's processes under supervisord
    return subprocess.Popen(args, start_new_session=True, **kw)


def test_leftovers_are_found_by_the_session_token_and_terminated(tmp_path):
    """The token of the session in the environment is what counts; paths a process names do not.
    (The session-id half and the real supervisord: tests/test_kill_safety.py.)"""
    state = tmp_path / "state"
    state.mkdir()
    session = hooks.Session.new(state)
    marked = {**os.environ, hooks.SESSION_ENV_VAR: session.token}
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    procs = [_start(["sleep", "60"], env=marked, cwd="/"), _start([sys.executable, "-c", ignores_term], env=marked)]
    other_token = {**os.environ, hooks.SESSION_ENV_VAR: hooks.Session.new(state).token}
    others = [
        _start([*SLEEP, str(state / "x.conf")], cwd=state),  # names the state dir, works in it: not ours
        _start(["sleep", "60"], env=other_token),  # another start's token
    ]
    try:
        time.sleep(0.5)
        found = {x.pid: x for x in hooks.leftovers(session)}
        assert {pid: x.why for pid, x in found.items()} == {p.pid: "session token" for p in procs}
        assert hooks.leftovers(None) == []
        t0 = time.monotonic()
        ended = hooks.terminate(list(found.values()), grace=1)
        assert {x.pid for x in ended} == set(found)
        took = time.monotonic() - t0
        assert all(_gone(p.pid, 0.1) for p in procs)
        assert 1 <= took < 8  # one of them ignores SIGTERM: SIGKILLed after the 1-s grace
        assert hooks.leftovers(session) == []
        assert all(p.poll() is None for p in others)
    finally:
        for p in [*procs, *others]:
            p.kill()
            p.wait()


def test_terminate_skips_a_reused_pid(tmp_path):
    """A leftover whose pid now belongs to a process started later (same command line) is not signalled."""
    state = tmp_path / "state"
    state.mkdir()
    session = hooks.Session.new(state)
    proc = _start(["sleep", "60"], env={**os.environ, hooks.SESSION_ENV_VAR: session.token})
    try:
        time.sleep(0.3)
        [item] = hooks.leftovers(session)
        earlier = hooks.Leftover(item.pid, item.name, item.why, item.command, item.started - 1)
        assert hooks.terminate([earlier], grace=0.1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_session_read_back_belongs_to_its_own_folder_only(tmp_path):
    state, copy = tmp_path / "state", tmp_path / "copy"
    state.mkdir()
    copy.mkdir()
    session = hooks.Session.new(state).with_supervisord(os.getpid())
    text = session.to_json()
    assert hooks.Session.from_json(text, state) == session
    assert hooks.Session.from_json(text, copy) is None  # a copied or restored state dir
    assert hooks.Session.from_json("{not json", state) is None
    st = os.stat(state)
    assert hooks.Session.from_json(f'{{"token": "short", "root": [{st.st_dev}, {st.st_ino}]}}', state) is None


def test_stale_pid_file_is_removed_unless_its_process_is_ours(tmp_path: Path):
    pidfile = tmp_path / "postmaster.pid"
    mark = str(tmp_path / "pgdata")
    ours = _start([*SLEEP, mark])
    stranger = _start(["sleep", "60"])
    dead = _start(["true"])
    dead.wait()
    try:
        for pid, kept in ((ours.pid, True), (stranger.pid, False), (dead.pid, False)):
            pidfile.write_text(f"{pid}\n{mark}\n")
            hooks.clear_stale_pid_file(pidfile, mark)
            assert pidfile.exists() == kept, pid
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


CHECK_SETTINGS = """
import ctypes, runpy, sys
namespace = runpy.run_path(sys.argv[1])
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
print(namespace["__all__"], sig.value)
"""


def test_local_settings_file_exports_nothing_and_installs_the_hook(tmp_path):
    path = hooks.write_local_settings(tmp_path / "airflow")
    assert path == tmp_path / "airflow" / "config" / "airflow_local_settings.py"
    out = subprocess.run([sys.executable, "-c", CHECK_SETTINGS, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", str(int(signal.SIGKILL))]
