"""Follow the alias, load a new version beside the served one, check it, swap atomically.

The served model is ONE attribute (``Served.current``) holding an immutable ``LoadedModel``: a request
reads it once and keeps that object, so a swap (one assignment) never touches a request in flight, and
the old model is freed when its last request ends. A version that fails to load or check is remembered
as refused (until the alias moves elsewhere) and the old one keeps serving. The registry being down
changes nothing but the reported ``registry`` state.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .model import LoadedModel, load_version, looks_unreachable, short_error

log = logging.getLogger("airflow_gitops.serving")
START_RETRY_S = 1.0
# While a version loads beside the served one, the loader thread and the request threads share the GIL.
# With CPython's default 5 ms switch interval a request thread that gave the GIL up (sklearn's trees
# release it for each tree) waits up to 5 ms to get it back, again and again: the "convoy effect" that
# made p99 during a swap 2.6-5.9x the steady p99 (bench/bench_serving.py). For the load only, the
# interval drops to 0.5 ms: the loader is interrupted sooner, requests keep their pace.
LOAD_SWITCH_INTERVAL_S = float(os.environ.get("AIRFLOW_GITOPS_SERVING_LOAD_SWITCH_S", "0.0005"))


def freeze_heap(why: str) -> int:
    """Move every object alive now out of the cyclic GC's reach (``gc.freeze``): the imported modules of
    MLflow, pandas, sklearn and FastAPI are ~240,000 tracked objects, and a full collection scanning them
    stops every thread for ~90 ms on this machine — a request that meets one waits that long. Frozen,
    a full collection scans only what was made since (~0.1 ms). Called once at start (after the imports
    a load needs, nothing served yet: the collection first is harmless) and once after the first model
    is served (the modules its loading imported). Not after later swaps: an old model is freed by
    reference counting, and a frozen cycle would never be."""
    if why == "start":
        gc.collect()
    gc.freeze()
    count = gc.get_freeze_count()
    log.info("serving: %d objects frozen out of the garbage collector's scans (%s)", count, why)
    return count


@contextlib.contextmanager
def short_gil_slices(interval: float = LOAD_SWITCH_INTERVAL_S):
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@dataclass
class Served:
    name: str
    alias: str
    current: LoadedModel | None = None
    alias_version: str | None = None  # where the alias pointed at the last look
    refused: dict[str, str] = field(default_factory=dict)  # version -> why
    problem: str | None = None  # why nothing is served (no model, no alias, ...)
    registry_error: str | None = None  # the registry (or its artifacts) could not be reached
    last_check: float | None = None
    swaps: list[dict[str, Any]] = field(default_factory=list)  # the last swaps, newest last

    def report(self) -> dict[str, Any]:
        cur = self.current
        return {
            "ready": cur is not None,
            "model": self.name,
            "alias": self.alias,
            "served_version": cur.version if cur else None,
            "alias_version": self.alias_version,
            "reason": None if cur else (self.problem or "no model loaded yet"),
            "refused": [{"version": v, "reason": r} for v, r in self.refused.items()],
            "registry": "ok" if self.registry_error is None else f"unreachable: {self.registry_error}",
            "last_check": self.last_check,
        }


class Watcher:
    """A thread: every ``poll_interval`` seconds, or at once when :meth:`wake` is called (the webhook)."""

    def __init__(
        self, served: Served, client, poll_interval: float, on_swap=None, on_refuse=None, on_start=None, fetcher=None
    ):
        self.served, self.client, self.poll_interval = served, client, poll_interval
        self.fetcher = fetcher  # a fetcher.Fetcher: download + first check in a worker process (None: here)
        self.on_swap, self.on_refuse, self.on_start = on_swap, on_refuse, on_start
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sync at a time
        self.thread = threading.Thread(target=self._run, name="serving-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        # ``on_start`` (the webhook's registration) is retried every START_RETRY_S until it succeeds: the
        # server may start before the registry answers (``up`` starts both at once).
        started = self.on_start is None
        import mlflow.pyfunc  # noqa: F401 - imported before the heap is frozen (what every load needs)

        freeze_heap("start")
        while not self._stop.is_set():
            self._wake.clear()
            if not started:
                started = bool(self.on_start())
            try:
                if self.fetcher:  # a worker that died (killed, OOM) is replaced now, not at the next move
                    self.fetcher.start()
                self.sync()
            except Exception as exc:  # noqa: BLE001 - the watcher never dies; the next look retries
                log.exception("serving: unexpected error while following the alias: %s", exc)
            self._wake.wait(self.poll_interval if started else min(self.poll_interval, START_RETRY_S))

    def sync(self) -> None:
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        s = self.served
        from mlflow.exceptions import MlflowException

        s.last_check = time.time()
        try:
            mv = self.client.get_model_version_by_alias(s.name, s.alias)
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                s.registry_error = None
                s.alias_version = None
                s.problem = f"registered model {s.name!r} has no alias {s.alias!r} (or does not exist) yet"
                if s.current is None:
                    log.info("serving: %s", s.problem)
                return
            s.registry_error = short_error(exc)
            log.warning("serving: the registry did not answer (%s); keeping the served model", s.registry_error)
            return
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            s.registry_error = short_error(exc)
            log.warning("serving: the registry did not answer (%s); keeping the served model", s.registry_error)
            return
        s.registry_error = None
        version = str(mv.version)
        moved = version != s.alias_version
        s.alias_version = version
        if moved:  # the alias went elsewhere: a version refused before may be tried again when it comes back
            s.refused = {v: r for v, r in s.refused.items() if v == version}
        cur = s.current
        if (cur is not None and cur.version == version) or version in s.refused:
            return
        log.info(
            "serving: %s@%s -> v%s; loading it beside %s",
            s.name,
            s.alias,
            version,
            f"v{cur.version}" if cur else "nothing",
        )
        try:
            fetched = self.fetcher.fetch(s.name, version) if self.fetcher else None
            with short_gil_slices():
                candidate = load_version(self.client, s.name, version, fetched)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the version
            reason = short_error(exc)
            if looks_unreachable(exc):  # not the model's fault: retried at the next look
                s.registry_error = reason
                log.warning("serving: could not fetch v%s (%s); keeping the served model", version, reason)
                return
            s.refused[version] = reason
            if self.fetcher:  # its downloaded folder, if it got that far, goes
                self.fetcher.keep(self.fetcher.kept)
            log.error(
                "serving: refused %s v%s: %s (still serving %s)",
                s.name,
                version,
                reason,
                f"v{cur.version}" if cur else "nothing",
            )
            if self.on_refuse:
                self.on_refuse(version, reason)
            return
        old = s.current
        s.current = candidate  # the swap: one assignment
        s.problem = None
        s.swaps = [*s.swaps[-19:], {"from": old.version if old else None, "to": version, "at": time.time()}]
        log.info(
            "serving: now serving %s v%s (loaded in %.2f s, checked in %.2f s)",
            s.name,
            version,
            candidate.load_seconds,
            candidate.check_seconds,
        )
        if old is None:
            freeze_heap(f"first model v{version} served")
        if self.fetcher:  # the folders of the served and the previous version stay (a request may still use it)
            self.fetcher.keep({candidate.local_dir, old.local_dir if old else None})
        if self.on_swap:
            self.on_swap(old, candidate)
