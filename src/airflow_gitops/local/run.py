"""``airflow-gitops run DAG_ID``: trigger a DAG on the local platform, wait, and report its tasks."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from .. import contract, gitremote
from ..errors import PlatformError
from .parts import Running


def run_dag(platform: Running, dag_id: str, conf: str | None, timeout: float, console: Console) -> dict:
    if not platform.is_running():
        raise PlatformError("the platform is not running", "start it: `airflow-gitops up`")
    try:
        params = json.loads(conf) if conf else {}
    except json.JSONDecodeError as err:
        raise PlatformError(f"--conf is not valid JSON: {err}", 'pass e.g. --conf \'{"model": "logistic"}\'') from None
    client = platform.client()
    if not _wait_listed(platform, client, dag_id, console):
        raise PlatformError(
            f"DAG {dag_id!r} is not known to Airflow",
            f"push it to {platform.spec.dag_repo_url} ({platform.spec.dags.sub_path}/) and wait "
            f"{platform.spec.dags.sync_interval} s; `airflow-gitops status` shows the parsed commit",
        )
    with console.status(f"running {dag_id}"):
        run_id = client.trigger(dag_id, params)
        run = client.wait_run(dag_id, run_id, timeout)
    table = Table(title=dag_id, caption=run_id)
    for col in ("task", "state", "seconds"):
        table.add_column(col)
    tis = client.task_instances(dag_id, run_id)
    for ti in tis:
        colour = "green" if ti["state"] == "success" else "red"
        table.add_row(ti["task_id"], f"[{colour}]{ti['state']}[/]", f"{ti.get('duration') or 0:.1f}")
    console.print(table)
    console.print(f"Commit (bundle_version): {run.get('bundle_version')}")
    finished = sorted((ti for ti in tis if ti["state"] == "success"), key=lambda ti: ti.get("end_date") or "")
    if finished:
        last = finished[-1]["task_id"]
        try:
            console.print(f"Result of {last}: {json.dumps(client.xcom(dag_id, run_id, last), default=str)}")
        except PlatformError:
            pass  # the last task returned nothing
    console.print(f"UI: {platform.layout.api_url}/dags/{dag_id}/runs/{run_id}")
    if run["state"] != "success":
        failed = [ti["task_id"] for ti in tis if ti["state"] in ("failed", "upstream_failed")]
        first = failed[0] if failed else "?"
        # With logs.remote the local copy is emptied once it is uploaded: the log is then in the bucket.
        where = contract.remote_log_folder(platform.spec) or str(platform.layout.task_logs)
        raise PlatformError(
            f"{dag_id} run {run_id} {run['state']} (failed tasks: {', '.join(failed) or 'none'})",
            f"read the task log in the UI, or under {where}/dag_id={dag_id}/run_id={run_id}/task_id={first}/",
        )
    return run


# How long a parsed head commit must have been parsed before a DAG missing from it counts as unknown:
# the DAG processor records the bundle's version before it has parsed every file of it.
SETTLE_S = 5.0
WAIT_MAX_S = 120.0


def _wait_listed(platform: Running, client, dag_id: str, console: Console) -> bool:
    """Is ``dag_id`` listed? Right after ``up`` or a push Airflow may not have parsed the branch head yet:
    wait until it has (and ``SETTLE_S`` more), at most ``WAIT_MAX_S``."""
    deadline, settled_since = time.monotonic() + WAIT_MAX_S, None
    with console.status(f"waiting for Airflow to parse the branch head and list {dag_id}"):
        while True:
            if dag_id in client.dag_ids():
                return True
            head = gitremote.branch_head(platform.spec)
            if head and platform.parsed_commit() == head:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since >= SETTLE_S:
                    return False
            else:
                settled_since = None
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
