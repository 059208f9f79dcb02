"""Bench: ``ml_training_pipeline`` on a real local platform: end-to-end wall time, slowest task, task memory.

    .venv/bin/python bench/bench_pipeline.py [--runs 2] [--model random_forest] [--json out.json]

Setup (timed, but not part of the figures): a real ``LocalTarget`` (PostgreSQL, moto S3, MLflow,
Airflow's api-server, scheduler, dag-processor, triggerer under supervisor) on its own ports
(``--ports``, default api 19080, mlflow 16000, s3 16055, postgres 16433) and a state directory under
``/tmp/bench-pipeline-*``; DAGs come from the platform's GitDagBundle on the seeded bare repository.
``down`` runs in ``finally``.

What is measured, per Dag run (the first run pays the cold caches: first bundle checkout for the
version, first imports of pandas/scikit-learn/mlflow from disk, the MLflow experiment/model creation):

* end-to-end:     trigger (REST) -> run in a terminal state (polled every 0.2 s), wall time
* run duration:   the Dag run's end_date - start_date as Airflow records it (scheduler start to finish)
* task durations: each task instance's ``duration`` from the REST API; the slowest task
* queue gaps:     sum of (task start - previous task end): scheduler/executor latency between tasks
* task memory:    peak RSS of each task's own process (LocalExecutor task processes below the
                  scheduler, process title ``airflow worker -- <task instance id>``), sampled with
                  psutil every 50 ms while the run is in progress

Target: end-to-end <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
from rich.console import Console

from airflow_gitops.local.platform import LocalTarget, port_free
from airflow_gitops.spec import parse_spec

TARGET_SECONDS = 60.0
DAG_ID = "ml_training_pipeline"
ORDER = ["ingest", "validate", "train", "evaluate", "log_to_mlflow", "register", "served"]
DEFAULT_PORTS = "19080,16000,16055,16433"


class TaskProcessSampler:
    """Peak RSS (MiB) of every task process below ``root_pid``, keyed by task instance id, and of the
    executor's worker processes (``airflow worker -- LocalExecutor``) as a whole."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.samples += 1
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    title = " ".join(part for part in child.cmdline() if part).strip()  # setproctitle pads
                    if title.startswith("airflow worker -- ") and "LocalExecutor" not in title:
                        ti_id = title.rsplit(" ", 1)[-1]
                        self.peaks[ti_id] = max(self.peaks.get(ti_id, 0.0), child.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue

    def __enter__(self) -> TaskProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def one_run(plat: LocalTarget, conf: dict, label: str) -> dict:
    client = plat.client()
    scheduler_pid = plat.status().components["scheduler"].pid
    with TaskProcessSampler(scheduler_pid) as sampler:
        started = time.monotonic()
        run_id = client.trigger(DAG_ID, conf)
        while (run := client.dag_run(DAG_ID, run_id))["state"] not in ("success", "failed"):
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{DAG_ID}/{run_id} still {run['state']} after 600 s")
            time.sleep(0.2)
        wall = time.monotonic() - started
    tis = {t["task_id"]: t for t in client.task_instances(DAG_ID, run_id)}
    tasks = {}
    for name in ORDER:
        t = tis.get(name, {})
        tasks[name] = {
            "state": t.get("state"),
            "duration_s": t.get("duration"),
            "start": t.get("start_date"),
            "end": t.get("end_date"),
            "rss_peak_mib": sampler.peaks.get(str(t.get("id"))),
        }
    gaps = 0.0
    for prev, cur in zip(ORDER, ORDER[1:], strict=False):
        a, b = _ts(tasks[prev]["end"]), _ts(tasks[cur]["start"])
        if a and b:
            gaps += (b - a).total_seconds()
    first_start = _ts(tasks[ORDER[0]]["start"])
    start, end = _ts(run.get("start_date")), _ts(run.get("end_date"))
    queued = _ts(run.get("queued_at"))
    result = {
        "label": label,
        "run_id": run_id,
        "state": run["state"],
        "bundle_version": run.get("bundle_version"),
        "end_to_end_s": wall,
        "run_duration_s": (end - start).total_seconds() if start and end else None,
        "queued_to_first_task_s": (first_start - queued).total_seconds() if first_start and queued else None,
        "gaps_between_tasks_s": gaps,
        "tasks": tasks,
        "samples": sampler.samples,
    }
    print_run(result)
    if run["state"] != "success":
        for name, t in tasks.items():
            if t["state"] != "success":
                print(f"--- log of {name} ({t['state']}) ---")
                print(client.task_log(DAG_ID, run_id, name)[-3000:] if t["state"] else "(not run)")
                break
    return result


def _f(x, fmt: str = "6.2f", unit: str = " s") -> str:
    return f"{x:{fmt}}{unit}" if isinstance(x, (int, float)) else f"{'-':>6}{unit}"


def print_run(r: dict) -> None:
    print(f"\n{r['label']}: {r['state']}  (run {r['run_id']}, commit {str(r['bundle_version'])[:12]})")
    verdict = "within" if r["end_to_end_s"] <= TARGET_SECONDS else "OVER"
    print(
        f"  end-to-end (trigger -> terminal state): {_f(r['end_to_end_s'], '6.1f')}   {verdict} {TARGET_SECONDS:.0f} s"
    )
    print(f"  Dag run duration (Airflow):             {_f(r['run_duration_s'], '6.1f')}")
    print(f"  queued -> first task start:             {_f(r['queued_to_first_task_s'], '6.1f')}")
    print(f"  gaps between tasks (sum):               {_f(r['gaps_between_tasks_s'], '6.1f')}")
    print("  task                duration   peak RSS of the task process")
    for name, t in r["tasks"].items():
        print(f"  {name:<18} {_f(t['duration_s'], '7.2f')}   {_f(t['rss_peak_mib'], '8.0f', ' MiB')}   {t['state']}")
    timed = {k: v for k, v in r["tasks"].items() if v["duration_s"] is not None}
    if timed:
        slowest = max(timed, key=lambda k: timed[k]["duration_s"])
        print(f"  slowest task: {slowest} ({timed[slowest]['duration_s']:.2f} s)")
    sized = {k: v for k, v in r["tasks"].items() if v["rss_peak_mib"]}
    if sized:
        heaviest = max(sized, key=lambda k: sized[k]["rss_peak_mib"])
        print(f"  task memory peak: {heaviest} ({sized[heaviest]['rss_peak_mib']:.0f} MiB RSS)")
    else:
        print(f"  task memory peak: no task process seen ({r['samples']} samples)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default="random_forest")
    parser.add_argument("--ports", default=DEFAULT_PORTS, help="api,mlflow,s3,postgres")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    ports = dict(zip(["api", "mlflow", "s3", "postgres"], map(int, args.ports.split(",")), strict=True))
    busy = [f"{k}={p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        print(f"ports in use: {', '.join(busy)}; pick others with --ports")
        return 2
    print(f"cpus: {os.cpu_count()}  load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir="/tmp"))
    spec = parse_spec(
        {"dags": {"sync_interval": 5}, "local": {"state_dir": str(base / "state"), "ports": ports}}, base_dir=base
    )
    plat = LocalTarget(spec)
    console = Console(file=open(os.devnull, "w"), force_terminal=False)  # noqa: SIM115
    figures: dict = {"target_seconds": TARGET_SECONDS, "cpus": os.cpu_count(), "runs": []}
    try:
        t = time.monotonic()
        plat.up(console)
        figures["up_s"] = time.monotonic() - t
        print(f"setup: platform up in {figures['up_s']:.1f} s (state {base})")
        client = plat.client()
        deadline = time.monotonic() + 120
        while DAG_ID not in client.dag_ids():
            if time.monotonic() > deadline:
                print(f"{DAG_ID} not listed after 120 s")
                return 1
            time.sleep(0.5)
        for i in range(args.runs):
            label = "first run" if i == 0 else ("second run" if i == 1 else f"run {i + 1}")
            r = one_run(plat, {"model": args.model}, f"{label} ({args.model})")
            figures["runs"].append(r)
            if r["state"] != "success":
                return 1
        print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("summary")
        for r in figures["runs"]:
            timed = {k: v["duration_s"] for k, v in r["tasks"].items() if v["duration_s"] is not None}
            sized = {k: v["rss_peak_mib"] for k, v in r["tasks"].items() if v["rss_peak_mib"]}
            slow = max(timed, key=timed.get)
            heavy = max(sized, key=sized.get) if sized else None
            mem = f"{heavy} {sized[heavy]:.0f} MiB" if heavy else "-"
            print(
                f"  {r['label']:<28} end-to-end {r['end_to_end_s']:5.1f} s   slowest {slow} {timed[slow]:.2f} s   "
                f"task memory peak {mem}"
            )
    finally:
        t = time.monotonic()
        plat.down(console)
        print(f"teardown: platform down in {time.monotonic() - t:.1f} s")
        marker = plat.layout.root / "postgres.location"
        if marker.exists():
            shutil.rmtree(Path(marker.read_text().strip()).parent, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
