"""A client connection to one of the platform's Unix-socket servers (the fork server, the task user's
zygote) that waits for it to listen and trusts it only when it runs as the expected user (``SO_PEERCRED``).
Standard library only: every launcher and task supervisor imports it."""

from __future__ import annotations

import os
import socket
import struct
import time


class Unreachable(Exception):
    """No server of the expected user answers on the path (the message says what was found)."""


def peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of ``conn``."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def connect(path: str, wait: float, uid: int | None = None) -> socket.socket:
    """A SOCK_SEQPACKET connection to ``path`` within ``wait`` seconds, whose server runs as ``uid``
    (default: our own user)."""
    expected = os.getuid() if uid is None else uid
    deadline = time.monotonic() + wait
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(path)
        except OSError as err:
            conn.close()
            if time.monotonic() >= deadline:
                raise Unreachable(f"nothing answers on {path} ({err.strerror or err})") from None
            time.sleep(0.05)
            continue
        pid, peer_uid = peer(conn)
        if peer_uid != expected:  # e.g. a socket put at the /tmp fallback path by another user
            conn.close()
            raise Unreachable(f"the socket {path} belongs to pid {pid} of another user ({peer_uid})")
        return conn
