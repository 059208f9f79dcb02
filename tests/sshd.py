"""A real ``sshd`` on 127.0.0.1 serving bare Git repositories, for tests that need SSH (deploy keys,
known_hosts, strict host key checking).

Usage::

    (registered in conftest.py through pytest_plugins: request the fixture by name)

    def test_clone(sshd_git):
        url = sshd_git.new_repo("dags", {"dags/hello.py": "..."})   # ssh://USER@127.0.0.1:PORT/.../dags.git
        env = {"GIT_SSH_COMMAND": sshd_git.git_ssh_command()}
        ...

What it provides (:class:`SshGitServer`):

* ``port``, ``host`` (127.0.0.1), ``user`` (the current OS user: root in CI);
* ``key_path``: an ed25519 deploy key (0600, no passphrase) listed in ``authorized_keys``;
* ``known_hosts_line`` / ``known_hosts_path``: the host key generated at test time, pinned as
  ``[127.0.0.1]:PORT ssh-ed25519 ...``;
* ``new_repo(name, files, branch="main")``: a bare repository with one commit, returns its ssh URL;
* ``push(url, files, message)``: commit more files to a repository's branch.

Needs ``/usr/sbin/sshd`` (Debian package ``openssh-server``); the fixture skips with a reason if absent.
sshd runs in the foreground (``-D -e``) with its own config: ``StrictModes no`` (temp dirs are not
0700-owned the way sshd wants), no passwords, no PAM. It is stopped at the end of the session.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ports import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def write_ed25519(path: Path, comment: str = "test") -> str:
    """Write an unencrypted OpenSSH ed25519 private key (0600); return the public line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path.with_name(path.name + ".pub").write_text(f"{pub} {comment}\n")
    return pub


def _git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@dataclass
class SshGitServer:
    root: Path
    port: int
    key_path: Path
    known_hosts_path: Path
    known_hosts_line: str
    host_public_key: str
    user: str = field(default_factory=getpass.getuser)
    host: str = "127.0.0.1"

    def url(self, repo: Path) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{repo}"

    def git_ssh_command(self, key: Path | None = None, known_hosts: Path | None = None) -> str:
        return (
            f"ssh -i {key or self.key_path} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={known_hosts or self.known_hosts_path} -o BatchMode=yes -F /dev/null"
        )

    def new_repo(self, name: str, files: dict[str, str], branch: str = "main") -> str:
        """A bare repository ``ROOT/repos/NAME.git`` with one commit of ``files``; returns the ssh URL."""
        bare = self.root / "repos" / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        self.push(bare, files, "initial DAGs", branch=branch)
        return self.url(bare)

    def push(self, bare: Path | str, files: dict[str, str], message: str, branch: str = "main") -> str:
        """Commit ``files`` (path -> text; None deletes) on ``branch`` of a bare repo (path); returns the sha."""
        bare = Path(str(bare).split(str(self.port), 1)[-1]) if str(bare).startswith("ssh://") else Path(bare)
        work = self.root / "work" / f"{bare.name}-{time.monotonic_ns()}"
        env = {**os.environ, **GIT_IDENTITY}
        _git("clone", "--quiet", str(bare), str(work), env=env)
        _git("checkout", "--quiet", "-B", branch, cwd=work, env=env)
        for rel, text in files.items():
            p = work / rel
            if text is None:
                p.unlink(missing_ok=True)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        _git("add", "-A", cwd=work, env=env)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work, env=env)
        _git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work, env=env)
        sha = _git("rev-parse", "HEAD", cwd=work).strip()
        shutil.rmtree(work, ignore_errors=True)
        return sha


def start_sshd(root: Path, host: str = "127.0.0.1") -> tuple[SshGitServer, subprocess.Popen]:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    host_key = root / "ssh_host_ed25519_key"
    host_pub = write_ed25519(host_key, "host")
    key_path = root / "deploy_key"
    deploy_pub = write_ed25519(key_path, "deploy")
    auth = root / "authorized_keys"
    auth.write_text(deploy_pub + " deploy\n")
    auth.chmod(0o600)
    port = free_port()
    known_line = f"[{host}]:{port} {host_pub}"
    known_hosts = root / "known_hosts"
    known_hosts.write_text(known_line + "\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {host}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {auth}",
                f"PidFile {root / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # privilege separation dir
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("sshd did not listen within 10 s")
    server = SshGitServer(root, port, key_path, known_hosts, known_line, host_pub, host=host)
    return server, proc


@pytest.fixture(scope="session")
def sshd_git(tmp_path_factory):
    """A running sshd with a deploy key and a pinned host key; see the module docstring."""
    if not Path(SSHD).exists():
        pytest.skip("sshd not installed: apt-get install -y openssh-server")
    server, proc = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
