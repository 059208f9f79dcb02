"""A small client for Airflow 3's REST API (``/api/v2``), authenticated with a JWT from ``/auth/token``."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import PlatformError

TERMINAL = {"success", "failed"}


def _safe_detail(r: httpx.Response) -> str:
    """An error response's message without the input it repeats (validation errors carry an 'input')."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return "(response not shown: the request held secrets)"
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in detail if isinstance(d, dict)
        )[:300]
    return str(detail)[:300] if isinstance(detail, str) else "(details not shown: the request held secrets)"


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self._auth = (username, password)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    # --- plumbing --------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self._token is None:
            r = self._http.post("/auth/token", json={"username": self._auth[0], "password": self._auth[1]})
            if r.status_code >= 400:
                raise PlatformError(
                    f"Airflow refused the login ({r.status_code})",
                    "the admin password is in STATE_DIR/secrets/admin_password; restart with `airflow-gitops up`",
                )
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, *, quiet: bool = False, **kw) -> Any:
        """``quiet``: the request carries secrets, so an error names the problem without echoing the
        response body (a 422 repeats the input)."""
        r = self._http.request(method, path, headers=self._headers(), **kw)
        if r.status_code == 401:  # token expired: log in again once
            self._token = None
            r = self._http.request(method, path, headers=self._headers(), **kw)
        if r.status_code >= 400:
            detail = _safe_detail(r) if quiet else r.text[:300]
            raise PlatformError(f"Airflow API {method} {path} answered {r.status_code}: {detail}")
        return r.json() if r.content else None

    def close(self) -> None:
        self._http.close()

    # --- endpoints -------------------------------------------------------------------------------
    def health(self) -> dict:
        r = self._http.get("/api/v2/monitor/health")
        r.raise_for_status()
        return r.json()

    def list_dags(self) -> list[dict]:
        return self.request("GET", "/api/v2/dags", params={"limit": 1000})["dags"]

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self.list_dags()}

    def import_errors(self) -> list[dict]:
        return self.request("GET", "/api/v2/importErrors", params={"limit": 1000})["import_errors"]

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = self.dag_run(dag_id, run_id)
            except httpx.TransportError:  # a busy single-worker API server: ask again
                run = {"state": "unknown"}
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"DAG run {dag_id}/{run_id} is still {run['state']} after {timeout:.0f} s",
                    f"look at the scheduler: `airflow-gitops logs scheduler`; the run is in the UI at {self.base_url}",
                )
            time.sleep(1)

    # --- Connections, Variables, pools (bodies may hold secrets: errors never echo them) ----------
    def create(self, collection: str, body: dict) -> None:
        self.request("POST", f"/api/v2/{collection}", json=body, quiet=True)

    def update(self, collection: str, name: str, body: dict) -> None:
        self.request("PATCH", f"/api/v2/{collection}/{quote(name, safe='')}", json=body, quiet=True)

    def delete(self, collection: str, name: str) -> None:
        try:
            self.request("DELETE", f"/api/v2/{collection}/{quote(name, safe='')}", quiet=True)
        except PlatformError as err:
            if " answered 404" not in err.problem:  # already gone
                raise

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.request("GET", path, params={"deserialize": True})["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        data = self.request("GET", path, params={"full_content": True})
        content = data.get("content", "")
        if not isinstance(content, list):
            return str(content)
        lines = []
        for entry in content:
            if not isinstance(entry, dict):
                lines.append(str(entry))
                continue
            lines.append(str(entry.get("event", entry)))
            # A failed task's exception is a structured field, not part of the event text.
            for err in entry.get("error_detail") or []:
                lines.append(f"{err.get('exc_type')}: {err.get('exc_value')}")
        return "\n".join(lines)
