"""Time ``airflow standalone`` until it is ready; run by ``bench_inner_loop.py --what up`` inside a
private network namespace (``unshare -n``), because standalone's log servers bind every interface.

    python bench/standalone_probe.py AIRFLOW_HOME API_PORT [IDLE_S]   # prints one JSON line

Ready = the API server answers ``/api/v2/monitor/health`` with the scheduler, dag-processor and
triggerer healthy (what ``airflow-gitops up`` waits for); also reported: when standalone printed its own
"Airflow is ready" banner (it waits 3 s after its check, which ignores the API server), and the PSS of
its whole process tree IDLE_S seconds after it was ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def _pss_tree_mib(root: int) -> float:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    todo, kib = [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return round(kib / 1024, 1)


def main() -> None:
    home, port = Path(sys.argv[1]), int(sys.argv[2])
    idle = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    }
    for k in [
        k
        for k in env
        if k.startswith("AIRFLOW__")
        and k
        not in (
            "AIRFLOW__API__HOST",
            "AIRFLOW__API__PORT",
            "AIRFLOW__API__BASE_URL",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
            "AIRFLOW__CORE__LOAD_EXAMPLES",
        )
    ]:
        env.pop(k)
    airflow = str(Path(sys.executable).with_name("airflow"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # standalone runs `airflow ...`
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [airflow, "standalone"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    marks: dict[str, float] = {}

    def reader():
        for line in proc.stdout:
            if "Airflow is ready" in line and "banner" not in marks:
                marks["banner"] = time.monotonic() - t0
            if "Database ready" in line and "db" not in marks:
                marks["db"] = time.monotonic() - t0

    threading.Thread(target=reader, daemon=True).start()
    deadline = t0 + 600
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline and "api_healthy" not in marks:
            try:
                h = http.get(f"http://127.0.0.1:{port}/api/v2/monitor/health").json()
                if all(
                    (h.get(k) or {}).get("status") == "healthy" for k in ("scheduler", "dag_processor", "triggerer")
                ):
                    marks["api_healthy"] = time.monotonic() - t0
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
    while "banner" not in marks and time.monotonic() < deadline:
        time.sleep(0.2)
    if idle and "api_healthy" in marks:
        time.sleep(idle)
        marks["pss_mib"] = _pss_tree_mib(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(json.dumps({k: round(v, 2) for k, v in marks.items()}))


if __name__ == "__main__":
    main()
