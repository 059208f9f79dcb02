#!/usr/bin/env python
"""Benchmark crash recovery of the local platform: SIGKILL one component while a DAG run is in flight.

Per component: seconds from ``kill -9`` until every component is healthy again (the killed one as a
new process; Airflow's jobs with a heartbeat written after the kill) and until the run in flight
succeeded. Ours (the platform's settings, docs/recovery.md) against Airflow's defaults (the same
platform with ``airflow.config`` setting Airflow's default values back, and the probe DAG with the
template's previous retries 1 / retry_delay 30 s). Prints the ratios.

Not a test: it starts real platforms on its own ports and state directories under /tmp/bench-recovery-*
and stops them again (try/finally, also on SIGTERM/SIGINT). Airflow's defaults make a scheduler crash
cost ~5 minutes per run, hence --cap.

    .venv/bin/python bench/bench_recovery.py                                 # all components, both configs
    .venv/bin/python bench/bench_recovery.py --components scheduler          # the one that matters most
    .venv/bin/python bench/bench_recovery.py --configs ours --components s3,mlflow
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from rich.console import Console

from airflow_gitops.local.platform import LocalTarget, port_free
from airflow_gitops.spec import parse_spec

COMPONENTS = ["s3", "mlflow", "dag-processor", "triggerer", "api-server", "scheduler", "postgres"]
JOBS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
DAG_ID = "bench_recovery_probe"
# Airflow 3.3's defaults for every key docs/recovery.md tunes (config.yml).
AIRFLOW_DEFAULTS = {
    "scheduler": {
        "orphaned_tasks_check_interval": 300,
        "scheduler_health_check_threshold": 30,
        "task_instance_heartbeat_timeout": 300,
        "task_instance_heartbeat_timeout_detection_interval": 10,
    },
    "triggerer": {"triggerer_health_check_threshold": 30},
    "workers": {"execution_api_retries": 5, "execution_api_retry_wait_max": 90},
}
CONFIGS = {
    "ours": {"airflow_config": None, "retries": 2, "retry_delay": 10},
    "airflow": {"airflow_config": AIRFLOW_DEFAULTS, "retries": 1, "retry_delay": 30},
}
PROBE_DAG = """
from datetime import datetime, timedelta, timezone
import time

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, dag, task


class Deferred(BaseOperator):
    def execute(self, context):
        moment = datetime.now(timezone.utc) + timedelta(seconds=15)
        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="resume")

    def resume(self, context, event=None):
        return "resumed"


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["bench"],
     default_args={{"owner": "bench", "retries": {retries}, "retry_delay": timedelta(seconds={retry_delay})}})
def _d():
    @task
    def work():
        time.sleep(15)
        return "worked"

    work()
    Deferred(task_id="wait")

_d()
"""


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


def wait(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def heartbeats(plat: LocalTarget) -> dict[str, float]:
    try:
        health = plat.client().health()
    except Exception:
        return {}
    out = {}
    for name, key in JOBS.items():
        stamp = (health.get(key) or {}).get(f"latest_{key}_heartbeat")
        if stamp and health[key].get("status") == "healthy":
            out[name] = datetime.fromisoformat(stamp).timestamp()
    return out


def recovered(plat: LocalTarget, name: str, old_pid: int, killed_at: float) -> bool:
    state = plat.supervisor.states().get(name, {})
    if state.get("statename") != "RUNNING" or state.get("pid") in (None, 0, old_pid):
        return False
    if not all(plat.component_health().values()):
        return False
    fresh = heartbeats(plat)
    must = list(JOBS) if name in ("postgres", "forkserver") else [name] if name in JOBS else []
    return all(fresh.get(job, 0) > killed_at for job in must)


def run_state(plat: LocalTarget, run_id: str) -> str:
    try:
        return plat.client().dag_run(DAG_ID, run_id)["state"]
    except Exception:
        return "unknown"


def tis(plat: LocalTarget, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in plat.client().task_instances(DAG_ID, run_id)}


def push_probe(plat: LocalTarget, work: Path, retries: int, retry_delay: int) -> None:
    import subprocess

    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    if not work.exists():
        subprocess.run(["git", "clone", "-q", plat.spec.dag_repo_url, str(work)], check=True)
    subprocess.run([*git, "pull", "-q", "--rebase"], cwd=work, check=True)
    (work / "dags" / f"{DAG_ID}.py").write_text(
        PROBE_DAG.format(dag_id=DAG_ID, retries=retries, retry_delay=retry_delay)
    )
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    if subprocess.run([*git, "diff", "--cached", "--quiet"], cwd=work).returncode:
        subprocess.run([*git, "commit", "-q", "-m", f"probe retries={retries}"], cwd=work, check=True)
        subprocess.run([*git, "push", "-q", "origin", "HEAD"], cwd=work, check=True)


def probe_ready(plat: LocalTarget, retries: int) -> bool:
    """The probe is parsed with the wanted retries (a pushed change is live)."""
    try:
        tasks = plat.client().request("GET", f"/api/v2/dags/{DAG_ID}/tasks")["tasks"]
        return all(t.get("retries") == retries for t in tasks)
    except Exception:
        return False


def measure(plat: LocalTarget, name: str, cap: float) -> dict:
    if not wait(lambda: plat.status().healthy, 300):
        return {"error": "not healthy before the kill"}
    client = plat.client()
    run_id = client.trigger(DAG_ID)
    in_flight = wait(lambda: tis(plat, run_id) == {"work": "running", "wait": "deferred"}, 180)
    if not in_flight:
        return {"error": f"the probe never ran: {tis(plat, run_id)}"}
    pid = plat.supervisor.states()[name]["pid"]
    real = plat.component_pids()[name]  # for Airflow's components: the fork behind the launcher
    procs = [psutil.Process(real)] + (psutil.Process(real).children(recursive=True) if name == "scheduler" else [])
    killed_at, t0, load_at = time.time(), time.monotonic(), load()
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    healthy_s = done_s = None
    state = "running"
    while time.monotonic() - t0 < cap and (healthy_s is None or done_s is None):
        now = time.monotonic() - t0
        if healthy_s is None and recovered(plat, name, pid, killed_at):
            healthy_s = round(now, 1)
        if done_s is None:
            state = run_state(plat, run_id)
            if state in ("success", "failed"):
                done_s = round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    out = {
        "healthy_s": healthy_s,
        "run_done_s": done_s,
        "run_state": state,
        "capped": done_s is None or healthy_s is None,
        "load_at_kill": load_at,
        "load_after": load(),
        "tasks": tis(plat, run_id) if healthy_s else None,
    }
    if done_s is None:  # let the run end before the next kill (or the next config)
        wait(lambda: run_state(plat, run_id) in ("success", "failed"), 900, interval=2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--components", default=",".join(COMPONENTS), help="comma list (default: all seven)")
    ap.add_argument("--configs", default="ours,airflow", help="comma list of: ours, airflow")
    ap.add_argument("--cap", type=float, default=420, help="max seconds to wait after a kill (default 420)")
    ap.add_argument("--ports", default="20080,17000,17055,17433", help="api,mlflow,s3,postgres")
    ap.add_argument("--json", default=None, help="write results here (default: STATE/../results.json)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    api, mlf, s3, pg = (int(x) for x in args.ports.split(","))
    ports = {"api": api, "mlflow": mlf, "s3": s3, "postgres": pg}
    busy = [f"{k}={p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        sys.exit(f"ports in use: {', '.join(busy)}; pick others with --ports")
    base = Path(tempfile.mkdtemp(prefix="bench-recovery-", dir="/tmp"))
    out = Path(args.json) if args.json else base / "results.json"
    comps = [c.strip() for c in args.components.split(",") if c.strip()]
    res: dict = {"nproc": os.cpu_count(), "cap": args.cap, "ports": ports, "state": str(base), "configs": {}}
    log(f"state under {base}; components {comps}")
    for cfg_name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cfg = CONFIGS[cfg_name]
        data = {"dags": {"sync_interval": 2}, "local": {"state_dir": str(base / cfg_name), "ports": ports}}
        if cfg["airflow_config"]:
            data["airflow"] = {"config": cfg["airflow_config"]}
        plat = LocalTarget(parse_spec(data, base_dir=base))
        r: dict = res["configs"].setdefault(cfg_name, {"settings": cfg, "components": {}})
        try:
            t0 = time.monotonic()
            plat.up(Console(file=sys.stdout, width=200))
            log(f"=== {cfg_name}: up in {time.monotonic() - t0:.1f} s")
            push_probe(plat, base / f"work-{cfg_name}", cfg["retries"], cfg["retry_delay"])
            if not wait(lambda p=plat, n=cfg["retries"]: probe_ready(p, n), 180):
                sys.exit("the probe DAG was not parsed within 180 s")
            for name in comps:
                r["components"][name] = m = measure(plat, name, args.cap)
                log(f"[{cfg_name}] {name}: {json.dumps(m)}")
                out.write_text(json.dumps(res, indent=2))
        finally:
            plat.down(Console(file=sys.stdout, width=200))
    out.write_text(json.dumps(res, indent=2))
    print_summary(res, comps)
    log(f"results in {out}")
    return 0


def _fmt(m: dict | None, key: str, cap: float) -> str:
    if not m:
        return "-"
    if m.get("error"):
        return f"error: {m['error']}"
    return f"> {cap:.0f} s" if m.get(key) is None else f"{m[key]:.1f} s"


def _ratio(a: dict | None, b: dict | None, key: str, cap: float) -> str:
    if not a or not b or not a.get(key):
        return "-"
    if b.get(key):
        return f"{b[key] / a[key]:.1f}×"
    return f"> {cap / a[key]:.1f}×" if not b.get("error") else "-"


def print_summary(res: dict, comps: list[str]) -> None:
    ours, base, cap = res["configs"].get("ours", {}), res["configs"].get("airflow", {}), res["cap"]
    print(
        "\n| component | kill -> all healthy: ours / defaults (ratio) | kill -> run success: ours / defaults (ratio) |"
    )
    print("|---|---|---|")
    for name in comps:
        a, b = ours.get("components", {}).get(name), base.get("components", {}).get(name)
        print(
            f"| {name} | {_fmt(a, 'healthy_s', cap)} / {_fmt(b, 'healthy_s', cap)} ({_ratio(a, b, 'healthy_s', cap)}) "
            f"| {_fmt(a, 'run_done_s', cap)} / {_fmt(b, 'run_done_s', cap)} ({_ratio(a, b, 'run_done_s', cap)}) |"
        )


if __name__ == "__main__":
    sys.exit(main())
