"""The fork server (``local/forkserver.py``) with real processes, sockets and signals: a server started
as ``up`` starts it (without Airflow's modules: its protocol does not depend on them), clients as
``launch.py`` runs them, and commands that show what the forked child got. The platform test
(tests/test_platform_local.py) checks that Airflow's four components are forks of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from airflow_gitops.local import forkserver

DIGEST = "digest-of-the-environment-file"

CLIENT = """
import sys
from airflow_gitops.local import forkserver
try:
    forkserver.run_forked(sys.argv[1], sys.argv[2:], connect_wait=float({wait}))
except forkserver.Unavailable as why:
    print(f"unavailable: {{why}}", flush=True)
    sys.exit(42)
"""


@pytest.fixture
def server(tmp_path):
    sock = tmp_path / "fs.sock"
    env = {**os.environ, forkserver.DIGEST_ENV_VAR: DIGEST}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_gitops.local.forkserver", str(sock), "json"], env=env, stderr=log
    )
    wait_for(lambda: forkserver.ping(str(sock)) is not None, 30, "the fork server to serve")
    yield proc, sock
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)
    log.close()
    print((tmp_path / "server.log").read_text())


def client(sock: Path, *command: str, digest: str = DIGEST, wait: float = 5, **kw) -> subprocess.Popen:
    env = {**os.environ, forkserver.DIGEST_ENV_VAR: digest, **kw.pop("env", {})}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT.format(wait=wait), str(sock), *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def child_of(server_proc, client_proc) -> psutil.Process:
    """The component the server forked for ``client_proc`` (its map, checked against the process tree)."""
    pid = wait_for(
        lambda: (forkserver.ping(str(server_proc.args[3])) or {}).get("children", {}).get(client_proc.pid),
        10,
        "the fork to be listed",
        interval=0.05,
    )
    child = psutil.Process(pid)
    assert child.ppid() == server_proc.pid
    return child


def test_child_has_the_clients_output_directory_environment_nice_and_exit_code(server, tmp_path):
    proc, sock = server
    work = tmp_path / "work"
    work.mkdir()
    script = 'pwd; echo "FOO=$FOO"; echo "nice=$(nice)"; echo "parent=$PPID"; echo oops >&2; exit 3'
    c = client(sock, "sh", "-c", script, cwd=work, env={"FOO": "bar"}, preexec_fn=lambda: os.nice(4))
    out, err = c.communicate(timeout=30)
    assert c.returncode == 3, (out, err)
    assert out.splitlines() == [str(work), "FOO=bar", "nice=4", f"parent={proc.pid}"]
    assert err.strip() == "oops"


def test_signals_reach_the_child_and_the_client_exits_as_it_did(server):
    _, sock = server
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    c = client(sock, "sh", "-c", script)
    assert c.stdout.readline().strip() == "ready"
    c.send_signal(signal.SIGTERM)
    out, _ = c.communicate(timeout=30)
    assert c.returncode == 7 and out.strip() == "got-term"

    killed = client(sock, "sh", "-c", "kill -KILL $$")
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL


def test_a_killed_client_takes_its_child_and_the_childs_children_with_it(server):
    proc, sock = server
    c = client(sock, "sh", "-c", "sleep 300 & echo started; wait")
    assert c.stdout.readline().strip() == "started"
    child = child_of(proc, c)
    grandchild = wait_for(lambda: child.children(), 10, "the sleep")[0]
    assert os.getpgid(child.pid) == child.pid != os.getpgid(proc.pid)  # its own group, as supervisord gives
    c.kill()
    c.wait(10)
    gone, alive = psutil.wait_procs([child, grandchild], timeout=10)
    assert not alive, f"still running after its client was killed: {alive}"
    assert proc.poll() is None, "the server must survive a client's death"


def test_a_killed_server_takes_its_children_with_it_and_their_clients_exit(server):
    proc, sock = server
    # (exec: the kernel's parent-death signal reaches the server's own children; a grandchild that is
    # not one of Airflow's processes, which pass it on, would be left to the sweep of `up`/`down`.)
    c = client(sock, "sh", "-c", "echo started; exec sleep 300")
    assert c.stdout.readline().strip() == "started"
    child = child_of(proc, c)
    proc.kill()
    _, err = c.communicate(timeout=30)
    assert c.returncode == 1 and "fork server ended" in err
    _, alive = psutil.wait_procs([child], timeout=10)
    assert not alive


def test_server_stop_stops_its_children_first(server):
    proc, sock = server
    c = client(sock, "sh", "-c", 'trap "echo stopping; exit 0" TERM; echo ready; while :; do sleep 0.1; done')
    assert c.stdout.readline().strip() == "ready"
    proc.terminate()
    assert proc.wait(30) == 0
    out, _ = c.communicate(timeout=30)
    assert c.returncode == 0 and out.strip() == "stopping"


def test_another_environment_or_no_server_means_no_fork(server, tmp_path):
    proc, sock = server
    other = client(sock, "sh", "-c", "echo ran", digest="another-environment")
    out, _ = other.communicate(timeout=30)
    assert other.returncode == 42 and "environment differs" in out and "ran" not in out
    assert proc.poll() is None

    t0 = time.monotonic()
    none = client(tmp_path / "nothing.sock", "sh", "-c", "echo ran", wait=0.5)
    out, _ = none.communicate(timeout=30)
    assert none.returncode == 42 and "no fork server answers" in out
    assert time.monotonic() - t0 < 10


def test_ping_answers_only_a_serving_server(tmp_path):
    assert forkserver.ping(str(tmp_path / "nothing.sock")) is None
    sock = tmp_path / "slow.sock"
    # Bound at once, serving only after its imports: not healthy until then.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from airflow_gitops.local import forkserver as f; "
            "l = f._listen(sys.argv[1]); time.sleep(3); f.Server(l).serve()",
            str(sock),
        ],
        env={**os.environ, forkserver.DIGEST_ENV_VAR: DIGEST},
    )
    try:
        wait_for(sock.exists, 10, "the socket")
        assert forkserver.ping(str(sock), timeout=0.5) is None
        assert wait_for(lambda: forkserver.ping(str(sock)), 15, "the server to serve")["pid"] == proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_server_of_another_user_is_not_used():
    """A socket at our path served by another user (the /tmp fallback path is predictable) gets no
    request: the client would hand it its output and environment."""
    import pwd

    try:
        other = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no second user (postgres) on this machine to run a server as")
    if os.getuid() != 0:
        pytest.skip("needs root to start a server as another user")
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="airflow-gitops-test-"))  # pytest's tmp_path is root's alone
    os.chmod(shared, 0o777)
    sock = shared / "fs.sock"
    # Whatever the other user runs there (here: a listener that accepts and reads, with the system's
    # Python: our environment is not theirs to read).
    listener = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.bind(sys.argv[1]); "
        "s.listen(8)\nwhile True:\n    c, _ = s.accept(); print('got', c.recv(1 << 20)[:20], flush=True)"
    )
    proc = subprocess.Popen(
        ["runuser", "-u", other.pw_name, "--", "/usr/bin/python3", "-c", listener, str(sock)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(sock.exists, 30, "the other user's socket")
        time.sleep(1)
        assert forkserver.ping(str(sock)) is None
        c = client(sock, "sh", "-c", "echo ran")
        out, _ = c.communicate(timeout=30)
        assert c.returncode == 42 and "another user" in out and "ran" not in out
    finally:
        proc.terminate()
        got, _ = proc.communicate(timeout=30)
        shutil.rmtree(shared, ignore_errors=True)
    assert "got" not in got.replace("got b''", ""), f"the other user's server read a request: {got}"


def _good_request(**over) -> dict:
    request = {
        "command": [sys.executable, "-c", "pass"],
        "env": {**os.environ, forkserver.DIGEST_ENV_VAR: DIGEST},
        "cwd": os.getcwd(),
        "nice": os.nice(0),
        "umask": 0o22,
        "title": "malformed-request test",
    }
    return {**request, **over}


MALFORMED = {
    "env-a-list": json.dumps(_good_request(env=["A=1"])).encode(),
    "env-values-not-text": json.dumps(_good_request(env={forkserver.DIGEST_ENV_VAR: DIGEST, "A": 1})).encode(),
    "cwd-not-text": json.dumps(_good_request(cwd=5)).encode(),
    "umask-not-a-number": json.dumps(_good_request(umask="022")).encode(),
    "nice-not-a-number": json.dumps(_good_request(nice=[1])).encode(),
    "title-not-text": json.dumps(_good_request(title={"a": 1})).encode(),
    "deep-json": b"[" * 20_000 + b"]" * 20_000,
    "not-json": b"\xff{not json",
    "not-an-object": b"[1, 2]",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_request_is_answered_and_the_server_keeps_serving(server, name):
    import socket

    proc, sock = server
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # as the server listens
    conn.settimeout(10)
    conn.connect(str(sock))
    socket.send_fds(conn, [MALFORMED[name]], [0, 1, 2])
    reply = json.loads(conn.recv(1 << 16) or b"null")
    conn.close()
    assert isinstance(reply, dict) and "refused" in reply, reply
    assert proc.poll() is None, "the fork server died"
    assert forkserver.ping(str(sock))["pid"] == proc.pid
    ok = client(sock, sys.executable, "-c", "print('still forking')")
    out, err = ok.communicate(timeout=30)
    assert ok.returncode == 0 and "still forking" in out, (out, err)
