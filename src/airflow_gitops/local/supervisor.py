"""Local processes under ``supervisord``: restarted when they crash, stopped as a process group.

We write ``supervisord.conf`` (0600; it holds no secrets: Airflow's programs read their environment
from a 0600 file through ``local/launch.py``) and talk to the daemon over its Unix socket with
XML-RPC, supervisor's own client API. Programs have ``autostart=false``: the platform starts them in
dependency order (database, then migrations, then Airflow).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from ..binaries import venv_bin
from ..errors import PlatformError
from ..keystore import write_private
from .layout import unix_socket_path
from .process_hooks import SESSION_ENV_VAR


@dataclass
class Program:
    name: str
    command: list[str]
    user: str | None = None
    directory: Path | None = None
    stopwaitsecs: int = 20
    # Start order low to high; `down` stops high to low, so PostgreSQL stops after Airflow.
    priority: int = 30


class Supervisor:
    def __init__(self, conf_dir: Path, log_dir: Path):
        self.conf_dir = conf_dir
        self.log_dir = log_dir

    @property
    def conf(self) -> Path:
        return self.conf_dir / "supervisord.conf"

    @property
    def pidfile(self) -> Path:
        return self.conf_dir / "supervisord.pid"

    @property
    def socket(self) -> Path:
        return unix_socket_path(self.conf_dir, "supervisor.sock", ".sock")

    def log_of(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def write_conf(self, programs: list[Program]) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.log_dir / 'supervisord.log'}",
            "logfile_maxbytes=5MB",
            "logfile_backups=1",
            f"pidfile={self.pidfile}",
            f"directory={self.conf_dir}",
            "nodaemon=false",
            "minfds=1024",
            # What the components write (logs, task logs, S3 objects, MLflow's files) is for us alone.
            "umask=077",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
        ]
        for p in programs:
            lines += [
                f"[program:{p.name}]",
                f"command={shlex.join(p.command)}",
                "autostart=false",
                f"priority={p.priority}",
                "autorestart=true",
                "startsecs=2",
                "startretries=3",
                f"stopwaitsecs={p.stopwaitsecs}",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={self.log_of(p.name)}",
                "stdout_logfile_maxbytes=10MB",
                "stdout_logfile_backups=2",
            ]
            if p.user:
                lines.append(f"user={p.user}")
            if p.directory:
                lines.append(f"directory={p.directory}")
            lines.append("")
        write_private(self.conf, "\n".join(lines))

    # --- daemon -------------------------------------------------------------------------------
    def rpc(self):
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        if not self.socket.exists():
            return False
        self._check_peer()
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def _check_peer(self) -> None:
        """Refuse a socket another user listens on: nothing is sent to it (not even "are you up?")."""
        import socket
        import struct

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            try:
                conn.connect(str(self.socket))
            except OSError:
                return  # nobody listens: not running (a stale socket; supervisord replaces it)
            pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (os.geteuid(), 0):
            raise PlatformError(
                f"the supervisor socket {self.socket} is held by process {pid} of another user (uid {uid}), "
                "not by this platform",
                f"stop that process and remove {self.socket}; then run the command again",
            )

    def start_daemon(self, hide: Iterable[str] = (), session: str | None = None) -> None:
        """Start supervisord; its programs inherit this environment minus the variables in ``hide``,
        plus ``session`` (the token that marks them as this start's: ``process_hooks.leftovers``)."""
        cmd = [venv_bin("supervisord"), "-c", str(self.conf)]
        hidden = set(hide)
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        if session:
            env[SESSION_ENV_VAR] = session
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        except subprocess.TimeoutExpired:
            raise PlatformError(
                "supervisord did not start within 60 s (is something else at its socket path?)",
                f"see the log; remove {self.socket} if no platform of yours runs",
                log=str(self.log_dir / "supervisord.log"),
            ) from None
        if result.returncode != 0:
            raise PlatformError(
                f"supervisord did not start: {result.stderr.strip() or result.stdout.strip()}",
                "see the log; another supervisord may hold the socket",
                log=str(self.log_dir / "supervisord.log"),
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.1)
        raise PlatformError(
            "supervisord started but does not answer on its socket",
            "see the log",
            log=str(self.log_dir / "supervisord.log"),
        )

    def start(self, name: str) -> None:
        """Start a program without waiting its ``startsecs``: callers check real health instead."""
        try:
            self.rpc().startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" in fault.faultString:
                return
            raise PlatformError(
                f"{name} failed to start ({fault.faultString})",
                f"read its log: `airflow-gitops logs {name}`",
                log=str(self.log_of(name)),
            ) from None

    def stop(self, name: str) -> None:
        try:
            self.rpc().stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def states(self) -> dict[str, dict]:
        if not self.running():
            return {}
        return {i["name"]: i for i in self.rpc().getAllProcessInfo()}

    def shutdown(self, timeout: float = 60) -> None:
        """Stop every program (in reverse start order), then the daemon; wait until it is gone."""
        if not self.running():
            return
        rpc = self.rpc()
        try:
            rpc.stopAllProcesses(True)
        except xmlrpc.client.Fault:
            pass
        pid = int(self.pidfile.read_text()) if self.pidfile.exists() else None
        try:
            rpc.shutdown()
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            pass
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
