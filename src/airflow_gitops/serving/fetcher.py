"""Download and first check of a new version in a worker process, beside the serving process.

Loading a version in a thread of the serving process shares its GIL with the requests: bench/bench_serving.py
found the slowest requests of every swap were the ones sent while the ~80 ms download + load ran (p99
during swaps 2.2-3.3x steady). The worker is one process (``multiprocessing`` with the *spawn* start method:
a fresh interpreter, no inherited threads, locks or pooled connections), started with the server
and kept warm (MLflow imported once). It downloads ``models:/<name>/<version>`` into a folder of ours,
loads it and predicts on its input example; the serving process then only loads that folder (~9 ms)
and checks it predicts the same. Costs one more process (~150 MiB RSS), measured by the bench.

A worker that dies (killed, out of memory) or hangs past ``timeout`` is replaced; the version is refused
with the reason, like one that fails its check.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from .model import Relayed, fetch_and_check

log = logging.getLogger("airflow_gitops.serving")
FETCH_TIMEOUT_S = 300.0


def _worker(conn) -> None:
    """The worker's loop: one request (name, version, folder) at a time; ends when the server goes away."""
    import mlflow.artifacts  # noqa: F401 - what every fetch needs, imported once
    import mlflow.pyfunc  # noqa: F401

    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the serving process is gone
            return
        if request is None:
            return
        conn.send(fetch_and_check(*request))


class Fetcher:
    def __init__(self, tracking_uri: str | None, timeout: float = FETCH_TIMEOUT_S):
        self.tracking_uri, self.timeout = tracking_uri, timeout
        self.root: Path | None = None  # made at start, 0700, ours; removed by close()
        self.kept: set[str | None] = set()
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()  # one fetch at a time (the watcher syncs one at a time anyway)
        self._n = 0

    def start(self) -> None:
        """Start the worker (it imports MLflow, ~2 s, while the server starts)."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="airflow-gitops-serving-"))
        if self._proc is not None and self._proc.is_alive():
            return
        if self._proc is not None:
            log.warning(
                "serving: the model-loading process (pid %s) had died (exit code %s); starting a new one",
                self._proc.pid,
                self._proc.exitcode,
            )
            self._conn.close()
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child,), name="serving-fetcher", daemon=True)
        self._proc.start()
        child.close()
        log.info("serving: new versions are downloaded under %s by process %s", self.root, self._proc.pid)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def fetch(self, name: str, version: str) -> dict[str, Any]:
        with self._lock:
            return self._fetch(name, version)

    def _fetch(self, name: str, version: str) -> dict[str, Any]:
        self.start()
        self._n += 1
        dest = self.root / f"v{version}-{self._n}"
        dest.mkdir()
        try:
            self._conn.send((self.tracking_uri, name, str(version), str(dest)))
            while True:
                if not self._conn.poll(self.timeout):
                    self._stop(kill=True)
                    raise Relayed(f"loading it took over {self.timeout:.0f} s (the process loading it was stopped)")
                result = self._conn.recv()
                if result != "ready":
                    break
        except (EOFError, OSError, BrokenPipeError):
            code = self._proc.exitcode if self._proc is not None else None
            self._stop(kill=True)
            shutil.rmtree(dest, ignore_errors=True)
            raise Relayed(f"the process loading it died (exit code {code})") from None
        except Relayed:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if "error" in result:
            shutil.rmtree(dest, ignore_errors=True)
            raise Relayed(result["error"], bool(result.get("unreachable")))
        result["dir"] = str(dest)
        return result

    def keep(self, dirs: set[str | None]) -> None:
        """Remove every downloaded folder but ``dirs`` (the served version's, and the one before it)."""
        self.kept = set(dirs)
        for d in self.root.iterdir():
            if str(d) not in dirs:
                shutil.rmtree(d, ignore_errors=True)

    def _stop(self, kill: bool) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if proc is None:
            return
        log.warning("serving: stopping the model-loading process (pid %s)%s", proc.pid, " at once" if kill else "")
        if not kill:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(5)
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
