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


def test_leftovers_are_found_by_environment_command_line_or_cwd_and_terminated(tmp_path):
    state = tmp_path / "state"
    home = state / "airflow"
    home.mkdir(parents=True)
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    procs = {
        "AIRFLOW_HOME": _start(["sleep", "60"], env={**os.environ, "AIRFLOW_HOME": str(home)}, cwd="/"),
        "command line": _start([*SLEEP, str(state / "x.conf")]),
        "working directory": _start([sys.executable, "-c", ignores_term], cwd=home),
    }
    other = _start(["sleep", "60"], cwd=tmp_path)  # next to the state dir, not in it
    try:
        time.sleep(0.5)
        found = {x.pid: x for x in hooks.leftovers([state], home)}
        assert {pid: found[pid].why for pid in found} == {p.pid: why for why, p in procs.items()}
        assert other.pid not in found
        t0 = time.monotonic()
        ended = hooks.terminate(list(found.values()), grace=1)
        assert {x.pid for x in ended} == set(found)
        took = time.monotonic() - t0
        assert all(_gone(p.pid, 0.1) for p in procs.values())
        assert 1 <= took < 8  # one of them ignores SIGTERM: SIGKILLed after the 1-s grace
        assert hooks.leftovers([state], home) == []
        assert other.poll() is None
    finally:
        for p in [*procs.values(), other]:
            p.kill()
            p.wait()


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
