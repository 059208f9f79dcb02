"""`down` (and `up`'s sweep) stop only what the platform started (issue 22), with real processes.

A real supervisord is started the way `up` starts it (``LocalTarget._start_supervisord``) with one
program, then SIGKILLed: its program is a real leftover. Next to it run processes that only *name*
the platform's state directory - a backup job reading it, a process working in it, a process of
another platform whose path ends the same, a process of another user. `down` must stop the leftover
and none of the others. (Before issue 22 the sweep matched the state path anywhere in any command line
and any working directory under it, so each of the four was killed.)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import make_spec, quiet_console

from airflow_gitops.local import process_hooks
from airflow_gitops.local.layout import postgres_user
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.local.supervisor import Program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process sessions are read from /proc")

# A program that sets its title the way PostgreSQL and Airflow do: that overwrites the environment the
# kernel shows (/proc/PID/environ), so only its session tells it is ours.
# (setproctitle zeroes the whole argv + environment area, however short the title.)
RETITLED = "import setproctitle, time; setproctitle.setproctitle('airflow scheduler'); time.sleep(600)"
# A program whose children leave supervisord's session (setsid, as a daemonizing tool does): the first
# keeps the environment (the token tells it is ours), the second gets an empty one, as PostgreSQL's
# backends (setsid, then a title) show theirs: only its parent tells.
DETACHES = (
    "import subprocess, sys, time; "
    "subprocess.Popen(['sleep', '600'], start_new_session=True); "
    "time.sleep(0.2); "
    "subprocess.Popen(['sleep', '601'], start_new_session=True, env={}); time.sleep(600)"
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stranger(args: list[str], **kw) -> subprocess.Popen:
    # No controlling terminal, like the platform's own processes (a process with one is never swept).
    return subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL, **kw)


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Crashed:
    """A platform whose supervisord was SIGKILLed, leaving its programs' processes behind."""

    def __init__(self, base: Path, programs: dict[str, list[str]]):
        self.platform = LocalTarget(make_spec(base))
        lay = self.platform.layout
        for d in (lay.root, lay.airflow_home, lay.logs):
            d.mkdir(parents=True, exist_ok=True)
        sup = self.platform.supervisor
        sup.write_conf([Program(name, cmd, directory=lay.root) for name, cmd in programs.items()])
        self.platform._start_supervisord()
        for name in programs:
            sup.start(name)
        states = sup.states()
        self.pids = {name: states[name]["pid"] for name in programs}
        _wait_for(lambda: all(_alive(p) for p in self.pids.values()), 10, "the programs to run")
        self.supervisord = int(sup.pidfile.read_text())
        self.tree = [self.supervisord, *(p.pid for p in psutil.Process(self.supervisord).children(recursive=True))]
        os.kill(self.supervisord, signal.SIGKILL)
        _wait_for(lambda: not _alive(self.supervisord), 10, "supervisord to die")

    @property
    def root(self) -> Path:
        return self.platform.layout.root

    def down(self) -> str:
        console = quiet_console()
        self.platform.down(console)
        return console.export_text()

    def cleanup(self) -> None:
        for pid in self.tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def crashed(tmp_path):
    c = Crashed(tmp_path / "p", {"leftover": ["sleep", "600"]})
    yield c
    c.cleanup()


def _end(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


def test_a_real_leftover_is_found_and_killed(tmp_path):
    """supervisord's orphans - a plain one, one that retitled itself, the setsid children of another
    (one with an empty environment) - are what `down` stops, each by what marks it; none is left."""
    c = Crashed(
        tmp_path / "p",
        {
            "plain": ["sleep", "600"],
            "retitled": [sys.executable, "-c", RETITLED],
            "detaches": [sys.executable, "-c", DETACHES],
        },
    )
    try:

        def execed() -> bool:  # setsid is done before the exec
            kids = psutil.Process(c.pids["detaches"]).children()
            return len(kids) == 2 and all(k.name() == "sleep" for k in kids)

        _wait_for(execed, 10, "the detached children")
        detached, bare = sorted(psutil.Process(c.pids["detaches"]).children(), key=lambda k: k.cmdline()[1])
        detached, bare = detached.pid, bare.pid
        c.tree += [detached, bare]
        assert Path(f"/proc/{bare}/environ").read_bytes() == b""
        retitled = psutil.Process(c.pids["retitled"])
        _wait_for(lambda: retitled.cmdline()[:1] == ["airflow scheduler"], 10, "the new title")
        token = c.platform.session().token
        retitled_env = Path(f"/proc/{c.pids['retitled']}/environ").read_bytes()
        assert token.encode() not in retitled_env, "setproctitle did not overwrite the environment shown"
        assert os.getsid(detached) != c.supervisord and os.getsid(bare) != c.supervisord
        found = {x.pid: x.why for x in c.platform.leftovers()}
        assert found == {
            c.pids["plain"]: "session token",
            c.pids["retitled"]: "supervisord's session",
            c.pids["detaches"]: "session token",
            detached: "session token",
            bare: f"started by {c.pids['detaches']}",
        }
        text = c.down()
        assert "Stopped what was left" in text and text.count("killed pid") == 5, text
        assert [pid for pid in (*c.pids.values(), detached, bare) if _alive(pid)] == []
        assert c.platform.leftovers() == []
    finally:
        c.cleanup()


def test_a_backup_reading_the_state_folder_is_not_killed(crashed):
    fifo = crashed.root / "backup.fifo"
    os.mkfifo(fifo)
    # `cat` blocks opening a FIFO nobody writes: a backup job in the middle of reading the state folder.
    backup = _stranger(["cat", str(crashed.root / "backup.fifo")])
    copier = _stranger([sys.executable, "-c", "import time; time.sleep(600)", "cp", "-r", str(crashed.root), "/backup"])
    try:
        time.sleep(0.3)
        assert "killed pid" in crashed.down()
        assert not _alive(crashed.pids["leftover"])
        assert _alive(backup.pid) and _alive(copier.pid)
    finally:
        _end(backup, copier)


def test_a_process_working_in_the_state_folder_is_not_killed(crashed):
    worker = _stranger(
        ["sleep", "600"],
        cwd=crashed.platform.layout.airflow_home,
        env={**os.environ, "AIRFLOW_HOME": str(crashed.platform.layout.airflow_home)},
    )
    try:
        time.sleep(0.3)
        assert "killed pid" in crashed.down()
        assert not _alive(crashed.pids["leftover"])
        assert _alive(worker.pid)
    finally:
        _end(worker)


def _mirror(root: Path, tmp_path: Path) -> Path:
    """Where another platform keeps a copy of ``root``: /<somewhere>/mirror/<the same path>."""
    mirror_root = tmp_path / "mirror" / str(root).lstrip("/")
    shutil.copytree(root, mirror_root, symlinks=True)
    return mirror_root


def test_another_platform_under_a_mirror_path_is_not_killed(crashed, tmp_path):
    """Its command line, working directory and AIRFLOW_HOME all contain our state path as a substring."""
    mirror_root = _mirror(crashed.root, tmp_path)
    other = _stranger(
        [sys.executable, "-c", "import time; time.sleep(600)", "-c", str(mirror_root / "supervisor")],
        cwd=mirror_root,
        env={**os.environ, "AIRFLOW_HOME": str(mirror_root / "airflow")},
    )
    try:
        time.sleep(0.3)
        assert "killed pid" in crashed.down()
        assert not _alive(crashed.pids["leftover"])
        assert _alive(other.pid)
    finally:
        _end(other)


def test_a_copy_of_the_state_folder_does_not_stop_the_original(crashed, tmp_path):
    """The copy holds our session file (token, supervisord's pid) too: it was written for our folder,
    so the copy's `down` ignores it. (A guard on the design: the old sweep did not read such a file.)"""
    mirror_root = _mirror(crashed.root, tmp_path)
    mirror = LocalTarget(make_spec(mirror_root.parent))
    assert mirror.layout.root == mirror_root and mirror.session_file.exists()
    assert mirror.session() is None
    console = quiet_console()
    mirror.down(console)
    assert "killed" not in console.export_text()
    assert _alive(crashed.pids["leftover"])


def test_a_process_of_another_user_is_never_killed(crashed):
    """User `nobody`, naming the state path and even carrying this start's token: not ours to signal."""
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user needs root")
    runs_pg_as = postgres_user()
    assert runs_pg_as is None or runs_pg_as.pw_name != "nobody", "PostgreSQL runs as nobody here: pick another user"
    nobody = pwd.getpwnam("nobody")
    token = crashed.platform.session().token
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(crashed.platform.layout.airflow_home),
        process_hooks.SESSION_ENV_VAR: token,
    }
    setpriv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
    theirs = _stranger(
        [*setpriv, sys.executable, "-c", "import time; time.sleep(600)", str(crashed.root)], cwd="/", env=env
    )
    try:
        _wait_for(lambda: psutil.Process(theirs.pid).uids().real == nobody.pw_uid, 10, "setpriv to exec")
        assert "killed pid" in crashed.down()
        assert not _alive(crashed.pids["leftover"])
        assert _alive(theirs.pid)
    finally:
        _end(theirs)


def test_no_session_no_sweep(tmp_path):
    """A state folder no `up` of this version started (or whose session file is gone): `down` signals
    nothing, however many processes name the folder."""
    platform = LocalTarget(make_spec(tmp_path))
    platform.layout.root.mkdir(parents=True)
    named = _stranger(["sleep", "600"], cwd=platform.layout.root)
    try:
        time.sleep(0.3)
        console = quiet_console()
        platform.down(console)
        assert "Nothing is running" in console.export_text()
        assert _alive(named.pid)
    finally:
        _end(named)
