#!/usr/bin/env python
"""Bench the inner loop (issue "Speed where users wait"): push -> new model version registered, the
per-task overhead of ``ml_training_pipeline``, the parse of Airflow's 58 example DAG files after a
push, and each variant's idle CPU, side by side with Airflow's defaults; and start-up against
``airflow standalone``.

    .venv/bin/python bench/bench_inner_loop.py                               # all but up, ~25 min
    .venv/bin/python bench/bench_inner_loop.py --what inner --variants airflow,ours,preload --rounds 3
    .venv/bin/python bench/bench_inner_loop.py --what parse --parse-variants airflow,pp1,dpre2patch
    .venv/bin/python bench/bench_inner_loop.py --what leak                   # tasks cannot leak state
    .venv/bin/python bench/bench_inner_loop.py --what up --rounds 3 --idle 20   # vs airflow standalone

One real platform (``LocalTarget``: PostgreSQL, rclone S3, MLflow, Airflow 3 under supervisor) on its
own ports and state directory under /tmp/bench-inner-*; stopped in ``finally``. A *variant* is a set
of levers of the launch plan and Airflow settings for the Airflow programs (``VARIANTS``); switching
rewrites the launch plan and the launcher's environment file and restarts the scheduler and
dag-processor, so every variant runs on the same
platform, database and MLflow. Variants alternate (A B A B ...) so that the neighbours' load, which
changes minute by minute on a shared machine, hits all of them alike; each line carries the load.

Figures:
* push -> registered: ``git push`` of a one-line change to ``dags/ml_training_pipeline.py`` ->
  Airflow parsed that commit (``dag.bundle_version``) -> trigger (REST) -> the MLflow model version
  tagged with that commit exists (its ``creation_timestamp``). The run is triggered as soon as the
  commit is parsed, as ``airflow-gitops run`` would.
* per task, from the task instance (metadata DB) and the task's own log lines: queued -> start
  (executor pick-up, fork, ``ti.run`` API call) -> first line of task code (``::endgroup::`` of
  "Pre Execute": bundle prepare, DAG file parse, XCom pulls) ... last line of task code ("Done.
  Returned value") -> end_date (XCom push, state API call) -> next task queued (scheduler loop).
* CPU seconds per run of each supervisor program's process tree (task processes are counted in the
  task user's zygote's, which forks them when `up` runs as root; in the same-user variants in the scheduler's: they
  are forks of its LocalExecutor workers, reaped by them) - load-independent.
* parse: push Airflow's ``example_dags`` folder (58 .py files) into ``dags/examples/`` -> every
  DAG in it listed by the DAG processor with that commit; then a push that removes them.
* idle: CPU seconds per program over ``--idle`` seconds with nothing running, after one pipeline run
  (so the scheduler holds the preloaded libraries, as on a platform in use), and the PSS then.
* up: ``airflow standalone`` (SQLite, no Git, no MLflow, no S3) and ``airflow-gitops up`` (the CLI, in
  an empty folder), cold then warm, alternating; PSS of each ``--idle`` seconds after it is ready.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_platform import _children_map, _cpu_s, _tree, measure_memory, program_trees  # noqa: E402
from ports import free_port  # noqa: E402

from airflow_gitops import keystore  # noqa: E402
from airflow_gitops.local.airflow_env import launch_plan, write_launch_plan  # noqa: E402
from airflow_gitops.local.platform import LocalTarget, port_free  # noqa: E402
from airflow_gitops.local.preload import DAG_PROCESSOR_MODULES, modules_for  # noqa: E402
from airflow_gitops.spec import parse_spec  # noqa: E402
from airflow_gitops.spec.models import DEFAULT_PRELOAD  # noqa: E402

DAG_ID = "ml_training_pipeline"
DAG_FILE = "dags/ml_training_pipeline.py"
ORDER = ["ingest", "validate", "train", "evaluate", "log_to_mlflow", "register", "served"]
DP_PRELOAD = DAG_PROCESSOR_MODULES
PP = "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"
IDLE = "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"
# The launch plan's levers (local/launch_plan.py) a variant switches, each to its "off" value.
PRELOAD_OFF = {"scheduler_preload": ()}
BUSY_OFF = {"scheduler_busy_sleep": None}
DP_PRELOAD_OFF = {"dag_processor_preload": ()}
POLL_OFF = {"dag_processor_poll": False}
# As root the platform runs DAG code as local.task_user, forked by its zygote, which preloads instead of the
# scheduler and the DAG processor ("ours"). Every other variant is the same-user layout (what `up` does
# without root, or with local.task_user: same), with its own levers on top: "sameuser" is that layout with
# every lever on, so "ours" vs "sameuser" is what the task user's hand-over costs per task.
SAME_USER = {
    "task_zygote_socket": None,
    "task_uid": None,
    "task_gid": None,
    "scheduler_preload": tuple(modules_for(list(DEFAULT_PRELOAD))),
    "dag_processor_preload": DAG_PROCESSOR_MODULES,
}

# A variant changes the Airflow programs' launch plan (lower-case keys: its fields) and environment
# (upper-case keys) as the platform writes them ("ours": unchanged). For the environment, None removes a
# variable: Airflow's default applies.
_VARIANTS: dict[str, dict] = {
    "sameuser": {},
    # Airflow's own defaults for every lever this bench is about (the platform's other settings, e.g.
    # the 1 s bundle refresh, stay as they are: this isolates the levers).
    "airflow": {**PRELOAD_OFF, **BUSY_OFF, **DP_PRELOAD_OFF, **POLL_OFF, PP: None, IDLE: None},
    # one lever at a time, against "airflow"
    "preload": {**BUSY_OFF},
    "busy": {**PRELOAD_OFF},
    "sleep01": {**PRELOAD_OFF, **BUSY_OFF, IDLE: "0.1"},
    # parse levers
    "pp1": {PP: "1", **DP_PRELOAD_OFF, **POLL_OFF},
    "pp2": {PP: "2", **DP_PRELOAD_OFF, **POLL_OFF},
    "pp4": {PP: "4", **DP_PRELOAD_OFF, **POLL_OFF},
    "dpre1": {PP: "1", "dag_processor_preload": DP_PRELOAD, **POLL_OFF},
    "dpre2": {PP: "2", "dag_processor_preload": DP_PRELOAD, **POLL_OFF},
    "dpre2patch": {PP: "2", "dag_processor_preload": DP_PRELOAD, "dag_processor_poll": True},
    "pp2patch": {PP: "2", **DP_PRELOAD_OFF, "dag_processor_poll": True},
}
VARIANTS: dict[str, dict] = {"ours": {}, **{name: {**SAME_USER, **levers} for name, levers in _VARIANTS.items()}}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


# --- platform ------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, base: Path, ports: dict, sync: int):
        self.base = base
        spec = parse_spec(
            {"dags": {"sync_interval": sync}, "local": {"state_dir": str(base / "state"), "ports": ports}},
            base_dir=base,
        )
        self.plat = LocalTarget(spec)
        self.console = Console(file=open(os.devnull, "w"), force_terminal=False)  # noqa: SIM115
        self.variant: str | None = None
        self.engine = None
        self.work = base / "clone"
        self.n = 0

    # launch plan and environment switch
    def env_for(self, variant: str) -> dict[str, str]:
        """The variant's environment; writes its launch plan (which the environment names)."""
        env = self.plat.airflow_env()
        levers = {k: v for k, v in VARIANTS[variant].items() if k.islower()}
        env.update(write_launch_plan(self.plat.layout, dataclasses.replace(launch_plan(self.plat.layout), **levers)))
        for key, value in VARIANTS[variant].items():
            if key.islower():
                continue
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def use(self, variant: str, components=("scheduler", "dag-processor", "task-zygote")) -> float:
        if self.variant == variant:
            return 0.0
        t = time.monotonic()
        keystore.write_private(self.plat.env_file, json.dumps(self.env_for(variant)))
        components = [name for name in components if name in self.plat._names()]
        for name in components:
            self.plat.supervisor.stop(name)
        for name in components:
            self.plat.supervisor.start(name)
        self.plat._wait_healthy(lambda _text: None)
        self.variant = variant
        took = time.monotonic() - t
        log(f"variant {variant}: restarted {', '.join(components)} in {took:.1f} s")
        return took

    def up(self) -> float:
        t = time.monotonic()
        self.plat.up(self.console)
        self.engine = sa.create_engine(self.plat.database_url(), pool_pre_ping=True)
        subprocess.run(["git", "clone", "-q", str(self.plat.spec.local_repo), str(self.work)], check=True)
        return time.monotonic() - t

    def renice(self, nice: int) -> int:
        """Set the scheduling priority of supervisord and every program's process tree (all started by
        this bench; new children inherit it). A measurement aid on a shared machine: with nice -15 the
        platform gets nearly the CPU it would on an idle one. Returns how many processes."""
        pid = int(self.plat.supervisor.pidfile.read_text())
        n = 0
        for p in _tree(pid, _children_map()):
            try:
                os.setpriority(os.PRIO_PROCESS, p, nice)
                n += 1
            except OSError:
                pass
        return n

    def down(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.plat.down(self.console)
        marker = self.plat.layout.root / "postgres.location"
        if marker.exists():
            shutil.rmtree(Path(marker.read_text().strip()).parent, ignore_errors=True)

    def q(self, sql: str, **params):
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).all()

    # git
    def git(self, *args: str) -> str:
        cmd = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args]
        return subprocess.run(cmd, cwd=self.work, check=True, capture_output=True, text=True).stdout.strip()

    def push(self, message: str) -> tuple[str, float]:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        t0 = time.time()
        self.git("push", "-q", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD"), t0

    # CPU per program (process tree incl. reaped children)
    def cpu(self) -> dict[str, float]:
        return {name: sum(_cpu_s(p) for p in tree) for name, tree in program_trees(self.plat).items()}


def cpu_delta(a: dict, b: dict) -> dict:
    # a program restarted in between has a smaller counter: count from zero
    return {k: round(b[k] - a.get(k, 0.0) if b[k] >= a.get(k, 0.0) else b[k], 2) for k in b}


# --- one inner-loop run -------------------------------------------------------------------------------
def _ts(d) -> float | None:
    return d.timestamp() if d else None


def task_log_marks(bench: Bench, run_id: str, task_id: str) -> dict:
    path = bench.plat.layout.task_logs / f"dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/attempt=1.log"
    marks: dict = {}
    if not path.exists():
        return marks
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        ev = str(rec.get("event", ""))
        ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp() if "timestamp" in rec else None
        if ev == "::group::Pre Execute":
            marks["child"] = ts
        elif ev == "Worker startup parse complete":
            marks["parsed"] = ts
            marks["bundle_prepare_ms"] = rec.get("bundle_prepare_ms")
            marks["dag_file_parse_ms"] = rec.get("dag_file_parse_ms")
        elif ev == "::endgroup::" and "code_start" not in marks:
            marks["code_start"] = ts
        elif ev.startswith("Done. Returned value"):
            marks["code_end"] = ts
    return marks


def mlflow_version_for(bench: Bench, sha: str) -> dict | None:
    url = f"{bench.plat.layout.mlflow_url}/api/2.0/mlflow/model-versions/search"
    name = bench.plat.spec.mlflow.registered_model
    r = httpx.get(url, params={"filter": f"name='{name}'", "max_results": 20, "order_by": ["creation_timestamp DESC"]})
    for mv in r.json().get("model_versions", []):
        tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
        if tags.get("git.commit") == sha:
            return mv
    return None


def inner_run(bench: Bench, label: str) -> dict:
    bench.n += 1
    path = bench.work / DAG_FILE
    lines = [x for x in path.read_text().splitlines() if not x.startswith("# bench-marker")]
    path.write_text("\n".join(lines + [f"# bench-marker {bench.n} {label}"]) + "\n")
    cpu0 = bench.cpu()
    load0 = os.getloadavg()[0]
    sha, t0 = bench.push(f"bench {bench.n} {label}")
    while True:
        row = bench.q("SELECT bundle_version FROM dag WHERE dag_id = :d", d=DAG_ID)
        if row and row[0][0] == sha:
            break
        if time.time() - t0 > 120:
            raise RuntimeError(f"commit {sha[:10]} not parsed after 120 s")
        time.sleep(0.05)
    t_parsed = time.time()
    run_id = bench.plat.client().trigger(DAG_ID, {})
    t_trig = time.time()
    while True:
        state = bench.q("SELECT state FROM dag_run WHERE dag_id=:d AND run_id=:r", d=DAG_ID, r=run_id)[0][0]
        if state in ("success", "failed"):
            break
        if time.time() - t_trig > 600:
            raise RuntimeError(f"run {run_id} still {state} after 600 s")
        time.sleep(0.1)
    t_done = time.time()
    cpu1 = bench.cpu()
    mv = mlflow_version_for(bench, sha) if state == "success" else None
    t_reg = int(mv["creation_timestamp"]) / 1000 if mv else None
    tis = {
        r.task_id: r
        for r in bench.q(
            "SELECT task_id, scheduled_dttm, queued_dttm, start_date, end_date FROM task_instance "
            "WHERE dag_id=:d AND run_id=:r",
            d=DAG_ID,
            r=run_id,
        )
    }
    tasks = []
    for tid in ORDER:
        ti = tis.get(tid)
        m = task_log_marks(bench, run_id, tid)
        tasks.append(
            {
                "task": tid,
                "scheduled": _ts(ti.scheduled_dttm) if ti else None,
                "queued": _ts(ti.queued_dttm) if ti else None,
                "start": _ts(ti.start_date) if ti else None,
                "end": _ts(ti.end_date) if ti else None,
                **m,
            }
        )
    res = {
        "label": label,
        "state": state,
        "sha": sha,
        "run_id": run_id,
        "load_start": round(load0, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "push_to_parsed": t_parsed - t0,
        "trigger_to_done": t_done - t_trig,
        "push_to_registered": (t_reg - t0) if t_reg else None,
        "push_to_done": t_done - t0,
        "tasks": tasks,
        "cpu": cpu_delta(cpu0, cpu1),
    }
    res.update(derive(res, t_trig))
    print_run(res)
    return res


def derive(r: dict, t_trig: float) -> dict:
    """Per-task overheads from the marks."""
    ts = r["tasks"]
    d = {
        "queued_to_start": [],
        "start_to_code": [],
        "queued_to_code": [],
        "code": [],
        "code_end_to_end": [],
        "end_to_next_queued": [],
        "end_to_next_start": [],
        "code_end_to_next_code": [],
        "bundle_prepare_s": [],
        "dag_file_parse_s": [],
    }

    def sub(a, b):
        return (b - a) if a is not None and b is not None else None

    for i, t in enumerate(ts):
        d["queued_to_start"].append(sub(t["queued"], t["start"]))
        d["start_to_code"].append(sub(t["start"], t.get("code_start")))
        d["queued_to_code"].append(sub(t["queued"], t.get("code_start")))
        d["code"].append(sub(t.get("code_start"), t.get("code_end")))
        d["code_end_to_end"].append(sub(t.get("code_end"), t["end"]))
        d["bundle_prepare_s"].append((t.get("bundle_prepare_ms") or 0) / 1000 if t.get("bundle_prepare_ms") else None)
        d["dag_file_parse_s"].append((t.get("dag_file_parse_ms") or 0) / 1000 if t.get("dag_file_parse_ms") else None)
        if i + 1 < len(ts):
            n = ts[i + 1]
            d["end_to_next_queued"].append(sub(t["end"], n["queued"]))
            d["end_to_next_start"].append(sub(t["end"], n["start"]))
            d["code_end_to_next_code"].append(sub(t.get("code_end"), n.get("code_start")))
    first = ts[0]
    d["trigger_to_first_queued"] = sub(t_trig, first["queued"])
    d["sum_code"] = sum(x for x in d["code"] if x is not None)
    return {"overhead": d}


def print_run(r: dict) -> None:
    o = r["overhead"]
    log(
        f"  {r['label']:8} {r['state']}: push->parsed {fmt(r['push_to_parsed'])}"
        f"  trigger->done {fmt(r['trigger_to_done'])}  push->registered {fmt(r['push_to_registered'])} s"
        f"  (load {r['load_start']}->{r['load_end']})"
    )
    print(
        f"           per task (median): queued->start {fmt(med(o['queued_to_start']))}  start->first line "
        f"{fmt(med(o['start_to_code']))}  code {fmt(med(o['code']))}  last line->end {fmt(med(o['code_end_to_end']))}"
        f"  end->next queued {fmt(med(o['end_to_next_queued']))}  end->next start {fmt(med(o['end_to_next_start']))}"
        f"  | sum of task code {fmt(o['sum_code'])} s"
    )
    print(
        "           task code s: "
        + "  ".join(f"{t['task']} {fmt((t.get('code_end') or 0) - (t.get('code_start') or 0))}" for t in r["tasks"])
    )
    print("           CPU s: " + "  ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu"].items()) if v >= 0.05))


# --- parse of the 58 example DAG files ------------------------------------------------------------------
def example_dags_dir() -> Path:
    import airflow

    return Path(airflow.__file__).parent / "example_dags"


def expected_example_dags(bench: Bench) -> dict[str, str]:
    """DAG id -> file (relative to the bundle's dags/ folder) in the example files, from a parse in a
    subprocess with the platform's environment."""
    code = (
        "import json,os,sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "b = DagBag(dag_folder=sys.argv[1], safe_mode=True)\n"
        "print(json.dumps({d: os.path.relpath(b.dags[d].fileloc, sys.argv[1]) for d in b.dags}))\n"
    )
    env = {**os.environ, **bench.plat.airflow_env()}
    out = subprocess.run(
        [sys.executable, "-c", code, str(example_dags_dir())], env=env, capture_output=True, text=True, check=True
    )
    return {d: f"examples/{f}" for d, f in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def parse_run(bench: Bench, label: str, expected: dict[str, str]) -> dict:
    """Done when every expected DAG is listed with the pushed commit, or its file has an import error
    (two examples need the example plugins, which a DAG bundle does not load: 90 DAGs + 2 errors)."""
    bench.n += 1
    folder = f"examples_{bench.n}"
    dest = bench.work / "dags" / folder
    shutil.copytree(example_dags_dir(), dest, ignore=shutil.ignore_patterns("__pycache__"))
    nfiles = len(list(dest.rglob("*.py")))
    cpu0 = bench.cpu()
    load0 = os.getloadavg()[0]
    sha, t0 = bench.push(f"examples {label}")
    first = None
    while True:
        rows = bench.q(
            "SELECT dag_id FROM dag WHERE bundle_version = :v AND relative_fileloc LIKE :f AND NOT is_stale",
            v=sha,
            f=f"{folder}/%",
        )
        seen = {r[0] for r in rows}
        if seen and first is None:
            first = time.time() - t0
        if set(expected) <= seen:
            break
        errors = {
            r[0]
            for r in bench.q(
                "SELECT filename FROM import_error WHERE filename LIKE :f AND timestamp > to_timestamp(:t)",
                f=f"{folder}/%",
                t=t0,
            )
        }
        if {d for d, f in expected.items() if f.replace("examples/", f"{folder}/", 1) not in errors} <= seen:
            break
        if time.time() - t0 > 300:
            log(f"  {label}: only {len(seen)}/{len(expected)} example DAGs after 300 s")
            break
        time.sleep(0.1)
    took = time.time() - t0
    cpu = cpu_delta(cpu0, bench.cpu())
    res = {
        "label": label,
        "files": nfiles,
        "dags": len(expected),
        "listed_s": round(took, 2),
        "first_s": round(first, 2) if first else None,
        "cpu": cpu,
        "load_start": round(load0, 2),
        "load_end": round(os.getloadavg()[0], 2),
    }
    log(
        f"  {label:10} {nfiles} files, {len(expected)} DAGs listed in {took:.2f} s (first after {fmt(first)} s)"
        f"  dag-processor CPU {cpu.get('dag-processor', 0):.1f} s  (load {res['load_start']}->{res['load_end']})"
    )
    # remove them again, and wait until they are gone, so the next trial starts from the same state
    shutil.rmtree(dest)
    sha2, t1 = bench.push(f"remove examples {label}")
    while bench.q("SELECT count(*) FROM dag WHERE relative_fileloc LIKE :f AND NOT is_stale", f=f"{folder}/%")[0][0]:
        if time.time() - t1 > 300:
            break
        time.sleep(0.5)
    return res


# --- idle CPU --------------------------------------------------------------------------------------------
def idle_cpu(bench: Bench, label: str, seconds: float) -> dict:
    time.sleep(10)  # let the restart settle
    a = bench.cpu()
    load0 = os.getloadavg()[0]
    time.sleep(seconds)
    d = cpu_delta(a, bench.cpu())
    per_min = {k: round(v * 60 / seconds, 2) for k, v in d.items()}
    mem = measure_memory(bench.plat)
    pss = {k: c["pss_mib"] for k, c in mem["components"].items()}
    log(
        f"  {label:10} idle CPU s/min: "
        + "  ".join(f"{k} {v:.2f}" for k, v in sorted(per_min.items()))
        + f"  (load {load0:.1f}->{os.getloadavg()[0]:.1f})  PSS total {mem['total_mib']:.0f} MiB,"
        f" scheduler {pss.get('scheduler', 0):.0f}"
    )
    return {"label": label, "cpu_s_per_min": per_min, "load_start": round(load0, 2), "pss_mib": pss}


# --- state leak check -----------------------------------------------------------------------------------
LEAK_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

PROBE = ("pandas", "sklearn", "mlflow", "boto3")


def _probe():
    import os, sys
    preloaded = {m: m in sys.modules for m in PROBE}  # before this task imports anything itself
    import mlflow, pandas, sklearn
    seen = {
        "pandas.BENCH_LEAK": getattr(pandas, "BENCH_LEAK", None),
        "sklearn assume_finite": sklearn.get_config()["assume_finite"],
        "mlflow tracking uri": mlflow.get_tracking_uri(),
        "env BENCH_LEAK": os.environ.get("BENCH_LEAK"),
    }
    leaked = (seen["pandas.BENCH_LEAK"] is not None or seen["sklearn assume_finite"]
              or "leaked" in seen["mlflow tracking uri"] or seen["env BENCH_LEAK"] is not None)
    # then leave changes behind for the next task to find (it must not)
    pandas.BENCH_LEAK = os.getpid()
    sklearn.set_config(assume_finite=True)
    mlflow.set_tracking_uri("http://127.0.0.1:9/leaked")
    os.environ["BENCH_LEAK"] = "1"
    return {"pid": os.getpid(), "worker": os.getppid(), "preloaded": preloaded, "seen": seen, "leaked": leaked}


@dag(dag_id="bench_leak_check", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
     default_args={"retries": 0})
def bench_leak_check():
    prev = None
    for i in range(6):
        @task(task_id=f"t{i}")
        def probe(_prev=None):
            return _probe()
        cur = probe(prev) if prev is not None else probe()
        prev = cur

bench_leak_check()
"""


def leak_check(bench: Bench) -> dict:
    (bench.work / "dags" / "bench_leak_check.py").write_text(LEAK_DAG)
    sha, t0 = bench.push("leak check DAG")
    while not bench.q("SELECT 1 FROM dag WHERE dag_id='bench_leak_check' AND bundle_version=:v", v=sha):
        if time.time() - t0 > 120:
            raise RuntimeError("leak check DAG not parsed")
        time.sleep(0.2)
    client = bench.plat.client()
    probes = []
    for i in range(2):
        run_id = client.trigger("bench_leak_check", {})
        run = client.wait_run("bench_leak_check", run_id, timeout=300)
        if run["state"] != "success":
            raise RuntimeError(f"leak check run {run_id} {run['state']}")
        for t in range(6):
            p = client.xcom("bench_leak_check", run_id, f"t{t}")
            probes.append(p)
            log(
                f"  leak check run {i + 1} t{t}: pid {p['pid']} worker {p['worker']} preloaded {p['preloaded']}"
                f" leaked {p['leaked']} seen {p['seen']}"
            )
    # pairs of consecutive tasks in one run on the same worker: the strongest case for a leak
    same_worker = sum(1 for a, b in zip(probes, probes[1:], strict=False) if a["worker"] == b["worker"])
    ok = not any(p["leaked"] for p in probes)
    log(f"  leak check: {len(probes)} tasks, {same_worker} consecutive pairs on the same worker, leaked: {not ok}")
    return {"probes": probes, "same_worker_pairs": same_worker, "ok": ok}


# --- up: ours (cold, warm) against `airflow standalone` (cold, warm) ---------------------------------------
def _pss_tree_mib(root_pid: int) -> float:
    from bench_platform import _pss_kib

    return round(sum(_pss_kib(p) for p in _tree(root_pid, _children_map())) / 1024, 1)


def our_up(folder: Path, idle: float) -> dict:
    """`airflow-gitops up` (the CLI, as a user runs it) from an empty folder, PSS after ``idle`` s, `down`,
    then `up` again on the kept state (warm) and its PSS."""
    from airflow_gitops.spec import load_spec

    ports = {"api": free_port(), "mlflow": free_port(), "s3": free_port(), "postgres": free_port()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "platform.yaml").write_text(json.dumps({"local": {"ports": ports}}))
    cli = str(Path(sys.executable).with_name("airflow-gitops"))
    out: dict = {}
    plat = LocalTarget(load_spec(folder / "platform.yaml"))

    def timed(verb: str) -> float:
        t = time.monotonic()
        res = subprocess.run([cli, verb], cwd=folder, capture_output=True, text=True, timeout=600)
        took = time.monotonic() - t
        if res.returncode != 0:
            raise RuntimeError(f"airflow-gitops {verb} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        return round(took, 2)

    try:
        for phase in ("cold", "warm"):
            out[f"load_{phase}"] = round(os.getloadavg()[0], 2)
            out[f"{phase}_s"] = timed("up")
            time.sleep(idle)
            out[f"{phase}_pss_mib"] = measure_memory(plat)["total_mib"]
            timed("down")
    finally:
        subprocess.run([cli, "down"], cwd=folder, capture_output=True, timeout=300)
        marker = plat.layout.root / "postgres.location"
        if marker.exists():
            shutil.rmtree(Path(marker.read_text().strip()).parent, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    log(
        f"  ours       cold {fmt(out.get('cold_s'))} s ({fmt(out.get('cold_pss_mib'), 0)} MiB)"
        f"  warm {fmt(out.get('warm_s'))} s ({fmt(out.get('warm_pss_mib'), 0)} MiB)"
        f"  (load {out.get('load_cold')} / {out.get('load_warm')})"
    )
    return out


def standalone_up(home: Path, idle: float) -> dict:
    """`airflow standalone` (Airflow's own one-command local mode) from an empty AIRFLOW_HOME, then again
    on the kept one (warm), in a private network namespace (its log servers bind every interface)."""
    out: dict = {}
    probe = Path(__file__).with_name("standalone_probe.py")
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    for phase in ("cold", "warm"):
        out[f"load_{phase}"] = round(os.getloadavg()[0], 2)
        cmd = [
            "unshare",
            "-n",
            "sh",
            "-c",
            f'ip link set lo up && exec "$0" {probe} {home} 8080 {idle}',
            sys.executable,
        ]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        try:
            marks = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            marks = {"error": (res.stdout + res.stderr)[-500:]}
        out[phase] = marks
        out[f"{phase}_s"] = marks.get("api_healthy")
        out[f"{phase}_pss_mib"] = marks.get("pss_mib")
    shutil.rmtree(home, ignore_errors=True)
    log(
        f"  standalone cold {fmt(out.get('cold_s'))} s ({fmt(out.get('cold_pss_mib'), 0)} MiB)"
        f"  warm {fmt(out.get('warm_s'))} s ({fmt(out.get('warm_pss_mib'), 0)} MiB)"
        f"  (load {out.get('load_cold')} / {out.get('load_warm')})"
    )
    return out


# --- summary ---------------------------------------------------------------------------------------------
def summarize_inner(runs: dict[str, list[dict]], baseline: str) -> None:
    print("\n== inner loop: medians per variant (first run of each variant block excluded: warm-up) ==")
    keys = [
        ("push_to_registered", "push->registered"),
        ("push_to_parsed", "push->parsed"),
        ("trigger_to_done", "trigger->run done"),
    ]
    okeys = [
        ("queued_to_start", "queued->start"),
        ("start_to_code", "start->first line"),
        ("queued_to_code", "queued->first line"),
        ("code_end_to_end", "last line->end"),
        ("end_to_next_queued", "end->next queued"),
        ("end_to_next_start", "end->next start"),
        ("code_end_to_next_code", "last line->next first line"),
        ("bundle_prepare_s", "bundle prepare"),
        ("dag_file_parse_s", "DAG file parse"),
    ]
    cols = list(runs)
    base = {}
    print(f"{'figure (s)':30}" + "".join(f"{c:>14}" for c in cols) + f"   ratio {baseline}/x")
    for key, name in keys:
        vals = {c: med([r[key] for r in runs[c]]) for c in cols}
        base[key] = vals.get(baseline)
        print(f"{name:30}" + "".join(f"{fmt(vals[c]):>14}" for c in cols) + "   " + _ratios(vals, baseline, cols))
    for key, name in okeys:
        vals = {c: med([x for r in runs[c] for x in r["overhead"][key]]) for c in cols}
        print(f"{name:30}" + "".join(f"{fmt(vals[c]):>14}" for c in cols) + "   " + _ratios(vals, baseline, cols))
    vals = {c: med([r["overhead"]["sum_code"] for r in runs[c]]) for c in cols}
    print(
        f"{'sum of task code':30}"
        + "".join(f"{fmt(vals[c]):>14}" for c in cols)
        + "   "
        + _ratios(vals, baseline, cols)
    )
    for tid in ORDER:
        vals = {
            c: med(
                [
                    (t.get("code_end") or 0) - (t.get("code_start") or 0)
                    for r in runs[c]
                    for t in r["tasks"]
                    if t["task"] == tid and t.get("code_end")
                ]
            )
            for c in cols
        }
        print(f"{'  code ' + tid:30}" + "".join(f"{fmt(vals[c]):>14}" for c in cols))
    comps = sorted({k for c in cols for r in runs[c] for k in r["cpu"]})
    print("CPU s per run:")
    for k in comps + ["total"]:
        vals = {
            c: med([(sum(r["cpu"].values()) if k == "total" else r["cpu"].get(k, 0.0)) for r in runs[c]]) for c in cols
        }
        print(f"{'  ' + k:30}" + "".join(f"{fmt(vals[c]):>14}" for c in cols) + "   " + _ratios(vals, baseline, cols))
    loads = {c: med([r["load_start"] for r in runs[c]]) for c in cols}
    print(f"{'load (1 min) at start':30}" + "".join(f"{fmt(loads[c], 1):>14}" for c in cols))
    print(f"{'runs counted':30}" + "".join(f"{len(runs[c]):>14}" for c in cols))


def _ratios(vals: dict, baseline: str, cols: list[str]) -> str:
    b = vals.get(baseline)
    out = []
    for c in cols:
        if c != baseline and b and vals[c]:
            out.append(f"{c} {b / vals[c]:.1f}x")
    return " ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="inner,idle,parse,leak", help="inner,idle,parse,leak")
    ap.add_argument("--variants", default="airflow,ours", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--parse-variants", default="airflow,ours", help="variants for --what parse")
    ap.add_argument("--idle-variants", default=None, help="variants for --what idle (default: --variants)")
    ap.add_argument("--rounds", type=int, default=3, help="A B C A B C ... rounds")
    ap.add_argument("--runs", type=int, default=2, help="inner-loop runs per variant per round (first is warm-up)")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement")
    ap.add_argument("--ports", default="19180,16100,16155,16533", help="api,mlflow,s3,postgres")
    ap.add_argument("--sync", type=int, default=1, help="dags.sync_interval")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--nice", type=int, default=None, help="renice the platform's processes (e.g. -15)")
    ap.add_argument("--keep", action="store_true", help="leave the platform running (state dir printed)")
    args = ap.parse_args()

    ports = dict(zip(["api", "mlflow", "s3", "postgres"], map(int, args.ports.split(",")), strict=True))
    busy = [f"{k}={p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        print(f"ports in use: {', '.join(busy)}; pick others with --ports")
        return 2
    what = set(args.what.split(","))
    if what == {"up"}:
        return main_up(args)
    variants = args.variants.split(",")
    base = Path(tempfile.mkdtemp(prefix="bench-inner-", dir="/tmp"))
    bench = Bench(base, ports, args.sync)
    results: dict = {"args": vars(args) | {"json": str(args.json)}, "nproc": os.cpu_count(), "variants": VARIANTS}
    log(f"state {base}; nproc {os.cpu_count()}")
    try:
        results["up_s"] = bench.up()
        log(f"platform up in {results['up_s']:.1f} s")
        if args.nice is not None:
            log(f"reniced {bench.renice(args.nice)} processes to {args.nice}")
        if "leak" in what:
            bench.use("ours")
            results["leak"] = leak_check(bench)
        if "inner" in what:
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for rnd in range(args.rounds):
                for v in variants:
                    bench.use(v)
                    for i in range(args.runs):
                        r = inner_run(bench, v)
                        r["round"], r["warmup"] = rnd, (i == 0 and args.runs > 1)
                        runs[v].append(r)
            results["inner"] = runs
            summarize_inner({v: [r for r in rs if not r["warmup"]] for v, rs in runs.items()}, variants[0])
            for v, rs in runs.items():
                steady = [r["push_to_registered"] for r in rs if not r["warmup"] and r["push_to_registered"]]
                first = [r["push_to_registered"] for r in rs if r["warmup"] and r["push_to_registered"]]
                print(
                    f"push->registered {v:10} median {fmt(med(steady))}  max {fmt(max(steady) if steady else None)}"
                    f"  all {[round(x, 2) for x in steady]}   first run after the scheduler (re)started:"
                    f" {[round(x, 2) for x in first]}"
                )
        if "idle" in what:
            iv = (args.idle_variants or args.variants).split(",")
            idle: dict[str, list] = {v: [] for v in iv}
            for _ in range(args.rounds):
                for v in iv:
                    bench.use(v, components=("scheduler", "dag-processor", "task-zygote"))
                    inner_run(bench, v)  # idle as a platform in use is: after a pipeline run (preloaded)
                    idle[v].append(idle_cpu(bench, v, args.idle))
            results["idle"] = idle
            print("\n== idle CPU s per minute (median of rounds) ==")
            comps = sorted({k for v in iv for x in idle[v] for k in x["cpu_s_per_min"]})
            print(f"{'program':16}" + "".join(f"{v:>12}" for v in iv))
            for k in comps + ["total"]:
                row = []
                for v in iv:
                    xs = [
                        (sum(x["cpu_s_per_min"].values()) if k == "total" else x["cpu_s_per_min"].get(k, 0))
                        for x in idle[v]
                    ]
                    row.append(fmt(med(xs)))
                print(f"{k:16}" + "".join(f"{x:>12}" for x in row))
            print("idle PSS MiB (median of rounds)")
            for k in sorted({k for v in iv for x in idle[v] for k in x["pss_mib"]}) + ["total"]:
                row = []
                for v in iv:
                    xs = [(sum(x["pss_mib"].values()) if k == "total" else x["pss_mib"].get(k, 0)) for x in idle[v]]
                    row.append(fmt(med(xs), 0))
                print(f"{k:16}" + "".join(f"{x:>12}" for x in row))
        if "parse" in what:
            expected = expected_example_dags(bench)
            log(f"example DAG files parse to {len(expected)} DAGs")
            pv = args.parse_variants.split(",")
            parse: dict[str, list] = {v: [] for v in pv}
            for _ in range(args.rounds):
                for v in pv:
                    bench.use(v, components=("dag-processor",))
                    parse[v].append(parse_run(bench, v, expected))
            results["parse"] = parse
            print("\n== 58 example DAG files: push -> all listed (median s) ==")
            b = med([x["listed_s"] for x in parse[pv[0]]])
            for v in pv:
                m = med([x["listed_s"] for x in parse[v]])
                c = med([x["cpu"].get("dag-processor", 0) for x in parse[v]])
                ratio = fmt(b / m if m else None)
                print(
                    f"  {v:12} {fmt(m)} s   dag-processor CPU {fmt(c)} s   ratio {pv[0]}/{v} {ratio}"
                    f"   loads {[x['load_start'] for x in parse[v]]}"
                )
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
            log(f"wrote {args.json}")
        if args.keep:
            log(f"kept running: state {base}")
        else:
            bench.down()
            shutil.rmtree(base, ignore_errors=True)
    return 0


def main_up(args) -> int:
    """--what up: `airflow standalone` and our `up`, alternating, cold then warm, ``--rounds`` times."""
    res: dict = {"ours": [], "standalone": []}
    try:
        for rnd in range(args.rounds):
            pair = [
                (
                    "standalone",
                    lambda: standalone_up(Path(tempfile.mkdtemp(prefix="bench-sa-", dir="/tmp")), args.idle),
                ),
                ("ours", lambda: our_up(Path(tempfile.mkdtemp(prefix="bench-up-", dir="/tmp")), args.idle)),
            ]
            for name, run in pair if rnd % 2 == 0 else reversed(pair):
                res[name].append(run())
    finally:
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
    print(f"\n== start-up: median (max) of {args.rounds}; PSS {args.idle:.0f} s after ready ==")
    figures = {}
    for name in ("standalone", "ours"):
        rows = res[name]
        for key in ("cold_s", "warm_s", "cold_pss_mib", "warm_pss_mib"):
            xs = [r.get(key) for r in rows if r.get(key) is not None]
            figures[(name, key)] = med(xs)
        f = {
            k: fmt(figures[(name, k)], 0 if "pss" in k else 2)
            for k in ("cold_s", "warm_s", "cold_pss_mib", "warm_pss_mib")
        }
        mx = {k: fmt(max((r.get(k) or 0) for r in rows)) for k in ("cold_s", "warm_s")}
        print(
            f"  {name:11} cold {f['cold_s']} s (max {mx['cold_s']})  warm {f['warm_s']} s (max {mx['warm_s']})"
            f"  PSS cold {f['cold_pss_mib']} MiB  warm {f['warm_pss_mib']} MiB"
        )
    sa = figures[("standalone", "cold_s")]

    def ratio(key: str, base_key: str = "cold_s") -> str:
        ours, base = figures[("ours", key)], figures[("standalone", base_key)]
        return fmt(ours / base if ours and base else None)

    print(
        f"  ours/standalone: cold {ratio('cold_s')} (goal <= 1.00)  warm {ratio('warm_s')} of standalone's cold"
        f" (goal <= 0.60)  warm/standalone warm {ratio('warm_s', 'warm_s')}"
        f"  PSS {ratio('warm_pss_mib', 'warm_pss_mib')} (goal <= 1.00)   [standalone cold {fmt(sa)} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
