"""Issue 22 (High): another local user must not be able to stand in for the platform's sockets.

A long state path moves the sockets to /tmp: they go into a private 0700 directory we create and check
at every use; a socket another user listens on is refused before anything is sent to it (SO_PEERCRED).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from airflow_gitops.errors import PlatformError
from airflow_gitops.local.layout import unix_socket_path
from airflow_gitops.local.supervisor import Supervisor

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user (nobody) needs root")


@pytest.fixture
def long_dir():
    """Under 100 characters but over 100 bytes (each 'ä' is two)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="s"))
    d = base / ("ä" * (90 - len(str(base)) - len("/supervisor/supervisor.sock"))) / "supervisor"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(base, ignore_errors=True)


def _fallback(directory: Path) -> Path:
    import hashlib

    digest = hashlib.sha256(os.fsencode(str(directory))).hexdigest()[:12]
    return Path("/tmp") / f"airflow-gitops-{os.geteuid()}-{digest}"


def test_a_long_non_ascii_state_path_gets_a_private_socket_dir(long_dir):
    d = long_dir
    assert len(str(d / "supervisor.sock")) < 100 < len(os.fsencode(str(d / "supervisor.sock")))  # bytes count
    path = unix_socket_path(d, "supervisor.sock", ".sock")
    try:
        assert path.parent == _fallback(d) and path.name == "supervisor.sock"
        st = os.lstat(path.parent)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))  # short enough to bind (the old check counted characters)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@needs_root
@pytest.mark.parametrize("planted", ["other owner", "world-writable", "symlink"])
def test_a_planted_socket_dir_is_refused_with_the_fix(long_dir, planted):
    d = long_dir
    target = _fallback(d)
    shutil.rmtree(target, ignore_errors=True)
    elsewhere = Path(tempfile.mkdtemp())
    try:
        if planted == "symlink":
            target.symlink_to(elsewhere)
        else:
            target.mkdir(mode=0o700)
            if planted == "other owner":
                os.chown(target, NOBODY.pw_uid, NOBODY.pw_gid)
            else:
                target.chmod(0o777)
        with pytest.raises(PlatformError) as err:
            unix_socket_path(d, "supervisor.sock", ".sock")
        assert "not a private directory of yours" in err.value.problem and f"rm -rf {target}" in err.value.fix
    finally:
        if target.is_symlink():
            target.unlink()
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)


@needs_root
def test_a_socket_another_user_listens_on_is_refused_before_anything_is_sent():
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    shared.chmod(0o777)
    sock_path = shared / "supervisor.sock"
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the other user: listens where the platform's client would look, logs what it gets
        try:
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(str(sock_path))
            srv.listen(5)
            os.write(w, b"1")
            conn, _ = srv.accept()
            conn.settimeout(3)
            got = conn.recv(1000)
            os._exit(10 if got else 0)
        except BaseException:
            os._exit(1)
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(PlatformError) as err:
            Supervisor(shared, shared).running()
        assert f"(uid {NOBODY.pw_uid})" in err.value.problem and "another user" in err.value.problem
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # it was sent nothing
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_second_up_in_the_same_state_folder_says_who_holds_it_and_touches_nothing(tmp_path):
    """Issue 22 (Low): two `up` at once used to kill each other's processes. The first holds a lock."""
    import subprocess
    import sys

    from conftest import make_spec, quiet_console

    from airflow_gitops.local.platform import LocalTarget

    spec = make_spec(tmp_path)
    platform = LocalTarget(spec)
    spec.state_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'up, pid %d' % os.getpid()); print('held', flush=True);"
            "time.sleep(60)",
            str(spec.state_dir / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in spec.state_dir.iterdir())
        for verb in (platform.up, platform.down):
            with pytest.raises(PlatformError) as err:
                verb(quiet_console())
            assert f"another airflow-gitops command (up, pid {holder.pid})" in err.value.problem
            assert "wait until it has finished" in err.value.fix
        assert sorted(p.name for p in spec.state_dir.iterdir()) == before  # nothing started, nothing written
    finally:
        holder.kill()
        holder.wait()


def test_what_the_components_write_is_not_readable_by_other_users(local_platform):
    """Issue 22 (Low): logs, task logs and S3 objects were world-readable (another user read the model's
    pickle from disk). supervisord starts every component with umask 077."""
    lay = local_platform.layout
    written = [
        lay.logs / "api-server.log",
        lay.logs / "serving.log",
        *lay.task_logs.rglob("*"),
        *lay.s3_data.rglob("*"),
    ]
    written = [p for p in written if p.exists()]
    assert len(written) >= 2
    loose = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in written if p.stat().st_mode & 0o077]
    assert not loose, loose
