"""Free TCP ports for tests, one source for every fixture.

The kernel hands out a just-closed ephemeral port again, so two calls of a plain "bind to 0, close"
can return the same number (CI saw PostgreSQL and MLflow both given 41745). Every port handed out
here is remembered for the life of the test process and never handed out twice.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and that this process has not handed out before."""
    with _lock:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free port that was not already handed out in 1000 tries")
