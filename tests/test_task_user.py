"""Issue 22: as root, DAG code runs as a user of its own (``local.task_user``), forked by that user's
zygote. The platform test (test_platform_local) proves the boundary end to end; these test its parts:
the setting, the account checks, the read access, the zygote's refusals, and what happens when the patch
that hands DAG code over cannot apply (nothing runs as root instead)."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import passable

from airflow_gitops.errors import PlatformError
from airflow_gitops.local import forkserver, task_user
from airflow_gitops.local.layout import Layout
from airflow_gitops.local.patches import guard, task_zygote
from airflow_gitops.spec import parse_spec
from airflow_gitops.spec.base import SpecError

ROOT = os.geteuid() == 0
AUTO = {"local": {"task_user": "auto"}}
as_root = pytest.mark.skipif(not ROOT, reason="DAG code runs as another user only when `up` runs as root")


@pytest.mark.parametrize("value", ["root", "Bad User", "tasks\n", "-x", "a" * 40, "tasks;rm"])
def test_a_task_user_that_is_not_a_plain_user_name_or_is_root_is_refused(value, tmp_path):
    with pytest.raises(SpecError) as err:
        parse_spec({"local": {"task_user": value}}, base_dir=tmp_path)
    assert "local.task_user" in str(err.value) or "task_user" in str(err.value)


@pytest.mark.parametrize("value", ["auto", "same", "airflow-tasks", "_svc1"])
def test_auto_same_and_user_names_are_accepted(value, tmp_path):
    assert parse_spec({"local": {"task_user": value}}, base_dir=tmp_path).local.task_user == value


def test_without_root_or_with_same_dag_code_runs_as_the_user_who_ran_up(tmp_path, monkeypatch):
    same = Layout(parse_spec({"local": {"task_user": "same"}}, base_dir=tmp_path))
    assert task_user.wanted(same) is None and task_user.resolve(same) is None
    monkeypatch.setattr(task_user.os, "geteuid", lambda: 1000)  # not root: no user can be switched to
    auto = Layout(parse_spec(AUTO, base_dir=tmp_path))
    assert task_user.wanted(auto) is None
    assert parse_spec({}, base_dir=tmp_path).local.task_user == "same"  # opt-in for now


@as_root
def test_a_named_user_that_does_not_exist_is_one_message_with_the_fix(tmp_path):
    layout = Layout(parse_spec({"local": {"task_user": "no-such-user-x"}}, base_dir=tmp_path))
    with pytest.raises(PlatformError) as err:
        task_user.ensure(layout, print)
    assert "'no-such-user-x', which is not a user" in err.value.problem and "useradd" in err.value.fix


@pytest.fixture
def two_users_one_group():
    names = ("agt-share-a", "agt-share-b")
    subprocess.run(["groupadd", "-f", "agt-shared"], check=True)
    for name in names:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["useradd", "--system", "--no-create-home", "-g", "agt-shared", name], check=True)
    yield names
    for name in names:
        subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", "agt-shared"], capture_output=True)


@as_root
def test_a_task_user_whose_group_others_share_is_refused(tmp_path, two_users_one_group):
    layout = Layout(parse_spec({"local": {"task_user": two_users_one_group[0]}}, base_dir=tmp_path))
    with pytest.raises(PlatformError) as err:
        task_user.resolve(layout)
    assert "agt-shared" in err.value.problem and two_users_one_group[1] in err.value.problem
    assert "--user-group" in err.value.fix


@as_root
def test_the_default_user_is_created_once_with_a_group_of_its_own(tmp_path):
    layout = Layout(parse_spec(AUTO, base_dir=tmp_path))
    said = []
    user = task_user.ensure(layout, said.append)
    pw = pwd.getpwnam(task_user.DEFAULT_USER)
    assert (user.uid, user.gid) == (pw.pw_uid, pw.pw_gid) and pw.pw_uid != 0
    assert pw.pw_shell.endswith("nologin")
    assert task_user.ensure(layout, said.append) == user  # exists now: nothing created twice
    assert len(said) <= 1


def test_shared_trees_are_group_readable_never_group_writable_and_links_are_not_followed(tmp_path):
    gid = os.getgid() if not ROOT else 65534
    root = tmp_path / "version"
    (root / "dags" / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    files = {
        "dags/a.py": 0o600,
        "dags/sub/b.py": 0o660,  # group-writable before: not after
        "dags/run.sh": 0o700,
        ".git/config": 0o600,
    }
    for rel, mode in files.items():
        (root / rel).write_text("x")
        (root / rel).chmod(mode)
    (root / "dags" / "sub").chmod(0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("not in the tree")
    outside.chmod(0o600)
    (root / "dags" / "link").symlink_to(outside)
    task_zygote.share_tree(root, gid)
    mode = {rel: stat.S_IMODE((root / rel).stat().st_mode) for rel in files}
    assert mode == {"dags/a.py": 0o640, "dags/sub/b.py": 0o640, "dags/run.sh": 0o750, ".git/config": 0o600}
    assert stat.S_IMODE((root / "dags" / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # the link's target is not the tree's
    if ROOT:
        assert (root / "dags" / "a.py").stat().st_gid == gid and os.lstat(root / "dags" / "link").st_gid == gid
        assert outside.stat().st_gid != gid


def test_a_passable_folder_lets_the_group_through_and_nobody_else(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    task_zygote.allow_traverse(folder, os.getgid())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o710


@as_root
def test_a_state_folder_the_task_user_cannot_reach_is_named_and_auto_runs_dag_code_as_root_saying_so(tmp_path, capsys):
    from airflow_gitops.checks.task_user import task_user_checks
    from airflow_gitops.local.platform import LocalTarget

    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    passable(tmp_path)
    state = {"local": {"state_dir": str(closed / "state"), "task_user": "auto"}}
    layout = Layout(parse_spec(state, base_dir=tmp_path))
    user = task_user.ensure(layout, print)
    why = task_user.problem(layout, user)
    assert f"{closed} is mode drwx------" in why.problem and f"chmod o+x {closed}" in why.fix
    # auto: up goes on with DAG code as root, and says so (here and in doctor); nothing of the task user starts.
    platform = LocalTarget(layout.spec)
    platform._preflight_task_user()
    out = capsys.readouterr().out
    assert "warning: DAG code runs as root, not airflow-gitops-tasks" in out and f"chmod o+x {closed}" in out
    assert task_user.active(layout) is None
    [row] = task_user_checks(layout.spec)
    assert row.status == "warn" and f"chmod o+x {closed}" in row.fix
    # A named user is a demand: up refuses instead.
    named = LocalTarget(parse_spec({"local": {**state["local"], "task_user": user.name}}, base_dir=tmp_path))
    with pytest.raises(PlatformError) as err:
        named._preflight_task_user()
    assert f"{closed} is mode drwx------" in err.value.problem
    closed.chmod(0o711)
    assert task_user.problem(layout, user) is None and task_user.active(layout) == user  # passable now


@as_root
def test_a_python_environment_out_of_the_task_users_reach_is_found_from_the_modes(tmp_path):
    layout = Layout(parse_spec(AUTO, base_dir=tmp_path))
    user = task_user.ensure(layout, print)
    hidden = tmp_path / "private" / "venv"
    hidden.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    passable(tmp_path)
    assert task_user.blocking_folder(hidden / "bin" / "python", user) == tmp_path / "private"
    unreadable = passable(tmp_path) / "site.py"
    unreadable.write_text("x")
    unreadable.chmod(0o600)
    assert task_user.blocking_folder(unreadable, user, 4) == unreadable
    assert task_user.blocking_folder(unreadable, user) is None  # only passing through asked
    assert task_user.problem(layout, user) is None  # this test run's own environment is in its reach


@as_root
def test_an_environment_the_task_user_cannot_run_is_one_message_with_the_fix(tmp_path):
    layout = Layout(parse_spec(AUTO, base_dir=tmp_path))
    user = task_user.ensure(layout, print)
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    python = hidden / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    home = passable(tmp_path)
    with pytest.raises(PlatformError) as err:
        task_user.check_can_run(user, home, python=str(python))
    assert "cannot run this Python environment" in err.value.problem and str(python) in err.value.problem
    assert "uv sync --python /usr/bin/python3.11" in err.value.fix and "local.task_user: same" in err.value.fix
    task_user.check_can_run(user, home)  # this test run's own environment: it can


def _start_zygote(sock: Path, user, platform_uid: int) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(sock.parent), "AIRFLOW_HOME": str(sock.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_gitops.local.zygote", str(sock), str(platform_uid)],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        env=env,
        cwd=str(sock.parent),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while forkserver.ping(str(sock), uid=user.uid) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the zygote did not answer"
        time.sleep(0.1)
    return proc


@as_root
def test_the_zygote_serves_only_the_platforms_user_and_only_its_two_targets(tmp_path):
    layout = Layout(parse_spec(AUTO, base_dir=tmp_path))
    user = task_user.ensure(layout, print)
    home = passable(tmp_path) / "home"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    sock = home / "zygote.sock"
    proc = _start_zygote(sock, user, platform_uid=0)
    try:
        # Our ping insists on the peer being the task user; a server of another user is not trusted.
        assert forkserver.ping(str(sock)) is None
        # A request naming anything but its targets (code, a command) is refused; so is a short fd set.
        for request, fds in (({"target": "os.system", "title": "x"}, 4), ({"target": "task", "title": "x"}, 2)):
            pairs = [socket.socketpair() for _ in range(fds)]
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.connect(str(sock))
            socket.send_fds(conn, [json.dumps(request).encode()], [a.fileno() for a, _ in pairs])
            conn.settimeout(10)
            reply = json.loads(conn.recv(1 << 16))
            assert "refused" in reply and "pid" not in reply, reply
            conn.close()
            for a, b in pairs:
                a.close(), b.close()
        # Another user (nobody) connecting is dropped without an answer.
        probe = (
            "import socket, sys\n"
            "c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c.connect(sys.argv[1]); c.settimeout(5)\n"
            "try:\n"
            "    c.send(b'{\"ping\": true}'); print(repr(c.recv(100)))\n"
            "except (BrokenPipeError, ConnectionResetError):\n"
            "    print(repr(b''))\n"
        )
        nobody = pwd.getpwnam("nobody")
        os.chmod(home, 0o711)
        os.chmod(sock, 0o777)  # even with the socket open to all: the peer check refuses
        got = subprocess.run(
            [sys.executable, "-c", probe, str(sock)],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert got.stdout.strip() == "b''", (got.stdout, got.stderr)
        assert proc.poll() is None  # and the zygote serves on
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "refused a connection from pid" in err and f"of user {nobody.pw_uid}" in err


def test_the_zygote_refuses_to_run_as_root_or_without_its_arguments(tmp_path):
    got = subprocess.run([sys.executable, "-m", "airflow_gitops.local.zygote"], capture_output=True, text=True)
    assert got.returncode != 0 and "usage:" in got.stderr
    if ROOT:
        got = subprocess.run(
            [sys.executable, "-m", "airflow_gitops.local.zygote", str(tmp_path / "z.sock"), "0"],
            capture_output=True,
            text=True,
        )
        assert got.returncode != 0 and "refusing to run as root" in got.stderr
        assert not (tmp_path / "z.sock").exists()


def _changed_guard(monkeypatch):
    target = f"{task_zygote.SUPERVISOR}:WatchedSubprocess.start"
    changed = guard.Guard(
        task_zygote.GUARD.patch,
        task_zygote.GUARD.what,
        task_zygote.GUARD.package,
        task_zygote.GUARD.label,
        {"1.3.2": {target: "0" * 64}},
    )
    monkeypatch.setattr(task_zygote, "GUARD", changed)
    monkeypatch.setattr(guard, "STATES", {})


@as_root
def test_when_the_handover_patch_cannot_apply_up_starts_nothing(tmp_path, monkeypatch):
    from airflow_gitops.local.platform import LocalTarget

    _changed_guard(monkeypatch)
    platform = LocalTarget(parse_spec(AUTO, base_dir=passable(tmp_path)))
    with pytest.raises(PlatformError) as err:
        platform._preflight_task_user()
    assert (
        "the patch that does it is off" in err.value.problem and "WatchedSubprocess.start changed" in err.value.problem
    )
    assert "local.task_user: same" in err.value.fix
    assert not platform.layout.root.exists()


def test_when_the_handover_patch_cannot_apply_a_component_refuses_to_run_dag_code_as_root(monkeypatch, capsys):
    from airflow_gitops.local import preload
    from airflow_gitops.local.launch_plan import LaunchPlan

    _changed_guard(monkeypatch)
    plan = LaunchPlan(task_zygote_socket="/nonexistent/z.sock", task_uid=65534, task_gid=65534)
    with pytest.raises(SystemExit) as done:
        preload._task_user(plan)
    assert done.value.code == 3
    err = capsys.readouterr().err
    assert "refusing to run DAG code as root" in err and "patch task_zygote: WatchedSubprocess.start changed" in err


def test_doctor_says_who_dag_code_runs_as_and_fails_on_what_would_stop_up(tmp_path):
    from airflow_gitops.checks.task_user import task_user_checks

    [same] = task_user_checks(parse_spec({"local": {"task_user": "same"}}, base_dir=tmp_path))
    assert same.status == "warn" and "the platform's keys" in same.saw
    if not ROOT:
        return
    [auto] = task_user_checks(parse_spec(AUTO, base_dir=passable(tmp_path)))
    assert auto.status == "ok" and task_user.DEFAULT_USER in auto.saw
    [missing] = task_user_checks(parse_spec({"local": {"task_user": "no-such-user-x"}}, base_dir=tmp_path))
    assert missing.status == "fail" and "useradd" in missing.fix
