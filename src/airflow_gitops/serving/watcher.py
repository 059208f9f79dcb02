"""Follow the alias, load a new version beside the served one, check it, swap atomically.

The served model is ONE attribute (``Served.current``) holding an immutable ``LoadedModel``: a request
reads it once and keeps that object, so a swap (one assignment) never touches a request in flight, and
the old model is freed when its last request ends. A version that fails to load or check is remembered
as refused (until the alias moves elsewhere) and the old one keeps serving. The registry being down
changes nothing but the reported ``registry`` state.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .model import LoadedModel, load_version

log = logging.getLogger("airflow_gitops.serving")
START_RETRY_S = 1.0


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

    def __init__(self, served: Served, client, poll_interval: float, on_swap=None, on_refuse=None, on_start=None):
        self.served, self.client, self.poll_interval = served, client, poll_interval
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
        while not self._stop.is_set():
            self._wake.clear()
            if not started:
                started = bool(self.on_start())
            try:
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
            s.registry_error = _short(exc)
            log.warning("serving: the registry did not answer (%s); keeping the served model", s.registry_error)
            return
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            s.registry_error = _short(exc)
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
            candidate = load_version(self.client, s.name, version)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the version
            reason = _short(exc)
            if _looks_unreachable(exc):  # not the model's fault: retried at the next look
                s.registry_error = reason
                log.warning("serving: could not fetch v%s (%s); keeping the served model", version, reason)
                return
            s.refused[version] = reason
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
        if self.on_swap:
            self.on_swap(old, candidate)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def _looks_unreachable(exc: BaseException) -> bool:
    import requests

    seen = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | ConnectionError | TimeoutError):
            return True
        text = str(seen)
        if "Max retries exceeded" in text or "Connection refused" in text or "EndpointConnectionError" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
