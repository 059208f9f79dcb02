#!/usr/bin/env python
"""Benchmark the local platform: push-to-live, cold/warm start, idle memory (issue 2, "Measure").

Not a test: it starts real platforms on its own ports and state directories under /tmp/bench-*,
prints figures side by side with a baseline (Airflow's defaults) and writes them as JSON and
Markdown. Every platform it starts is stopped again (try/finally, also on SIGTERM/SIGINT).

    .venv/bin/python bench/bench_platform.py                      # everything (~12 min)
    .venv/bin/python bench/bench_platform.py --pushes 5 --runs ours10,ours1

Runs (each one `up`, measure, `down`; all on ONE state dir, so only the first `up` is a cold start):
  ours10    the platform's defaults (dags.sync_interval 10, bundle_refresh_check_interval 1):
            cold start, idle memory, push-to-live, then down and a warm restart (`up` again).
  ours1     dags.sync_interval 1: push-to-live.
  airflow   Airflow's defaults where the spec lets us set them: GitDagBundle refresh_interval 300,
            bundle_refresh_check_interval 5, [api] workers 4, [core] parallelism 32,
            [dag_processor] parsing_processes 2: idle memory, push-to-live capped at --cap seconds.

Other engineers' work on the same machine skews timings: the load average is printed beside
every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from airflow_gitops.binaries import venv_bin
from airflow_gitops.local.platform import LocalTarget, port_free
from airflow_gitops.spec import parse_spec

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


# --- recording up()'s progress lines with timestamps ------------------------------------------------
class StepRecorder:
    """A file for rich's Console: every complete line is kept with its monotonic timestamp."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.buf = ""
        self.lines: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            now = time.monotonic()
            if line.strip():
                self.lines.append((now, line.strip()))
                print(f"    +{now - self.t0:6.2f}s  {line.strip()}", flush=True)
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class HealthWatcher(threading.Thread):
    """Polls every component's own health signal and notes when each first reports healthy."""

    def __init__(self, plat: LocalTarget, t0: float):
        super().__init__(daemon=True)
        self.plat, self.t0 = plat, t0
        self.first: dict[str, float] = {}
        self.stop = threading.Event()

    def _mark(self, name: str, ok: bool) -> None:
        if ok and name not in self.first:
            self.first[name] = time.monotonic() - self.t0

    def run(self) -> None:
        lay = self.plat.layout
        with httpx.Client(timeout=1) as http:
            while not self.stop.is_set():
                try:
                    self._mark("postgres", self.plat.postgres.ready())
                except Exception:
                    pass
                for name, url in (
                    ("s3", f"http://{HOST}:{lay.ports.s3}/moto-api/"),
                    ("mlflow", f"{lay.mlflow_url}/health"),
                ):
                    try:
                        self._mark(name, http.get(url).status_code < 500)
                    except httpx.HTTPError:
                        pass
                try:
                    health = http.get(f"{lay.api_url}/api/v2/monitor/health").json()
                    self._mark("api-server", True)
                    for comp, key in (
                        ("scheduler", "scheduler"),
                        ("dag-processor", "dag_processor"),
                        ("triggerer", "triggerer"),
                    ):
                        self._mark(comp, ((health.get(key) or {}).get("status")) == "healthy")
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.2)


def _cpu_s(pid: int) -> float:
    """utime+stime of a process plus its waited-for children (seconds)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


def program_trees(plat: LocalTarget, kids: dict[int, list[int]] | None = None) -> dict[str, list[int]]:
    """Each supervisor program -> the pids that work for it: its process tree and, for Airflow's
    components, the tree of the fork that runs it (a child of the fork server, whose own entry then
    holds only itself and what it forked for no component, e.g. a migration)."""
    kids = _children_map() if kids is None else kids
    states = plat.supervisor.states()
    real = plat.component_pids(states)
    trees: dict[str, list[int]] = {}
    forks: set[int] = set()
    for name, info in states.items():
        pid = info.get("pid") or 0
        if not pid:
            continue
        tree = _tree(pid, kids)
        if real.get(name, pid) != pid:
            fork_tree = _tree(real[name], kids)
            forks.update(fork_tree)
            tree += fork_tree
        trees[name] = tree
    for name, tree in trees.items():
        if name == "forkserver":
            trees[name] = [p for p in tree if p not in forks]
    return trees


def cpu_by_component(plat: LocalTarget) -> dict:
    """CPU seconds each supervisor program's process tree has used so far (i.e. to start up)."""
    return {name: round(sum(_cpu_s(p) for p in tree), 1) for name, tree in program_trees(plat).items()}


def timed_up(plat: LocalTarget) -> dict:
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    rec = StepRecorder(t0)
    console = Console(file=rec, force_terminal=False, width=200, color_system=None)
    watcher = HealthWatcher(plat, t0)
    watcher.start()
    load_start = load()
    try:
        plat.up(console)
    finally:
        watcher.stop.set()
    total = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_by_component(plat)
    # `airflow db migrate`, initdb, git: children up() waited for
    cpu["up() subprocesses (db migrate, initdb, git)"] = round(
        (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 1
    )
    rec.write("\n")
    steps = [(t - t0, line) for t, line in rec.lines]
    # phases: from one progress line to the next ("Platform is up" ends the last one)
    phases = []
    marks = [(0.0, "preflight (ports, binaries)")] + steps
    for (ta, la), (tb, _lb) in zip(marks, marks[1:], strict=False):
        if la.startswith("Platform is up"):
            break
        phases.append({"phase": la, "seconds": round(tb - ta, 2)})
    up_line = next((t for t, line in steps if line.startswith("Platform is up")), total)
    return {
        "seconds": round(total, 2),
        "healthy_at": round(up_line, 2),
        "print_access_s": round(total - up_line, 2),
        "phases": phases,
        "first_healthy": {k: round(v, 2) for k, v in sorted(watcher.first.items(), key=lambda kv: kv[1])},
        "cpu_s": cpu,
        "cpu_total_s": round(sum(cpu.values()), 1),
        "load_start": load_start,
        "load_end": load(),
    }


def timed_down(plat: LocalTarget) -> float:
    t0 = time.monotonic()
    plat.down(Console(file=open(os.devnull, "w")))
    return round(time.monotonic() - t0, 2)


# --- memory -------------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmd(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return raw or Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def measure_memory(plat: LocalTarget) -> dict:
    """PSS (MiB) per supervisor program, summed over its process tree; plus supervisord itself."""
    comps: dict[str, dict] = {}
    seen: set[int] = set()
    for name, tree in program_trees(plat).items():
        seen.update(tree)
        procs = sorted(((p, _pss_kib(p)) for p in tree), key=lambda x: -x[1])
        comps[name] = {
            "pss_mib": round(sum(k for _, k in procs) / 1024, 1),
            "processes": len(procs),
            "top": [{"pid": p, "pss_mib": round(k / 1024, 1), "cmd": _cmd(p)[:110]} for p, k in procs[:6]],
        }
    sup_pid = int(plat.supervisor.pidfile.read_text()) if plat.supervisor.pidfile.exists() else 0
    if sup_pid:
        comps["supervisord"] = {"pss_mib": round(_pss_kib(sup_pid) / 1024, 1), "processes": 1, "top": []}
    total = round(sum(c["pss_mib"] for c in comps.values()), 1)
    return {"components": comps, "total_mib": total, "load": load()}


# --- push-to-live ---------------------------------------------------------------------------------------
DAG_TEMPLATE = """\
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["bench"])
def bench():
    @task
    def noop():
        return 1

    noop()


bench()
"""

GIT_ID = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True)


def push_to_live(plat: LocalTarget, tag: str, pushes: int, cap: float, gap_max: float, rng) -> dict:
    spec = plat.spec
    client = plat.client()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-clone-") as tmp:
        work = Path(tmp) / "work"
        subprocess.run(
            ["git", "clone", "-q", "--branch", spec.dags.branch, str(spec.local_repo), str(work)],
            check=True,
            capture_output=True,
        )
        client.dag_ids()  # log in once before timing
        for i in range(pushes):
            # A random gap samples the phase of the refresh cycle instead of always pushing right after it.
            time.sleep(rng.uniform(0, gap_max))
            dag_id = f"bench_{tag}_{int(time.time())}_{i}"
            path = work / spec.dags.sub_path / f"{dag_id}.py"
            path.write_text(DAG_TEMPLATE.format(dag_id=dag_id))
            git("add", str(path.relative_to(work)), cwd=work)
            git("commit", "-q", "-m", f"bench: add {dag_id}", cwd=work)
            load_at = load()
            t0 = time.monotonic()
            git("push", "-q", "origin", f"HEAD:refs/heads/{spec.dags.branch}", cwd=work)
            pushed = time.monotonic() - t0
            live = None
            while time.monotonic() - t0 < cap:
                try:
                    if dag_id in client.dag_ids():
                        live = time.monotonic() - t0
                        break
                except Exception:
                    pass
                time.sleep(0.1)
            results.append(
                {
                    "dag_id": dag_id,
                    "seconds": None if live is None else round(live, 2),
                    "push_s": round(pushed, 3),
                    "load": load_at,
                }
            )
            shown = f"{live:6.2f} s" if live is not None else f"> {cap:.0f} s (cap)"
            log(f"  push {i + 1}/{pushes} [{tag}] {dag_id}: live after {shown} (git push {pushed * 1000:.0f} ms)")
    client.close()
    secs = [r["seconds"] for r in results]
    done = [s for s in secs if s is not None]
    over = len(secs) - len(done)
    # A capped wait counts as +inf for the median/max.
    ordered = sorted(done) + [float("inf")] * over
    med = statistics.median(ordered) if ordered else None
    return {
        "pushes": results,
        "median_s": None if med in (None, float("inf")) else round(med, 2),
        "max_s": None if over or not done else round(max(done), 2),
        "capped": over,
        "cap_s": cap,
    }


# --- the runs --------------------------------------------------------------------------------------------
def make_spec(state: Path, ports: dict, sync: int, airflow_config: dict | None = None):
    data = {
        "dags": {"sync_interval": sync},
        "local": {"state_dir": str(state), "ports": ports},
    }
    if airflow_config:
        data["airflow"] = {"config": airflow_config}
        data["local"]["parallelism"] = AIRFLOW_DEFAULT_PARALLELISM
    return parse_spec(data, base_dir=state.parent)


AIRFLOW_DEFAULTS = {
    "dag_processor": {"bundle_refresh_check_interval": 5, "parsing_processes": 2},
    "api": {"workers": 4},
}
AIRFLOW_DEFAULT_PARALLELISM = 32  # [core] parallelism: set through local.parallelism (the platform owns the key)


def cli_import_seconds() -> float:
    """Wall time of `airflow version`: what every Airflow process (and `db migrate`) pays to import."""
    t0 = time.monotonic()
    subprocess.run(
        [venv_bin("airflow"), "version"],
        capture_output=True,
        env={**os.environ, "AIRFLOW_HOME": tempfile.mkdtemp(prefix="bench-home-")},
    )
    return round(time.monotonic() - t0, 2)


def machine() -> dict:
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines()[:3]:
        k, v = line.split(":")
        mem[k] = round(int(v.split()[0]) / 1024 / 1024, 1)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    try:
        af = subprocess.run([venv_bin("airflow"), "version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        af = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_gib": mem.get("MemTotal"),
        "mem_available_gib": mem.get("MemAvailable"),
        "load_at_start": load(),
        "python": pyplatform.python_version(),
        "airflow": af,
        "kernel": pyplatform.release(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=10, help="pushes per run (default 10)")
    ap.add_argument("--baseline-pushes", type=int, default=3, help="pushes for the 300-s baseline (default 3)")
    ap.add_argument("--cap", type=float, default=60, help="max wait per push in the 300-s baseline (default 60)")
    ap.add_argument("--idle", type=float, default=30, help="idle seconds after up before measuring memory")
    ap.add_argument("--runs", default="ours10,ours1,airflow", help="comma list of: ours10, ours1, airflow")
    ap.add_argument("--ports", default="18080,15000,15055,15433", help="api,mlflow,s3,postgres")
    ap.add_argument("--state", default=None, help="state dir (default: a new /tmp/bench-platform-*)")
    ap.add_argument("--json", default=None, help="write results here (default: STATE/../results.json)")
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    api, mlf, s3, pg = (int(x) for x in args.ports.split(","))
    ports = {"api": api, "mlflow": mlf, "s3": s3, "postgres": pg}
    busy = [f"{k}={p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        sys.exit(f"ports in use: {', '.join(busy)}; pick others with --ports")
    base = Path(args.state).parent if args.state else Path(tempfile.mkdtemp(prefix="bench-platform-", dir="/tmp"))
    state = Path(args.state) if args.state else base / "state"
    rng = random.Random(args.seed)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]

    res: dict = {"machine": machine(), "ports": ports, "state": str(state), "runs": {}}
    res["machine"]["airflow_cli_import_s"] = cli_import_seconds()
    log(f"machine: {json.dumps(res['machine'])}")
    log(f"state dir {state}; ports {ports}")
    out = Path(args.json) if args.json else base / "results.json"

    def save() -> None:
        out.write_text(json.dumps(res, indent=2))

    configs = {
        "ours10": dict(sync=10, airflow_config=None),
        "ours1": dict(sync=1, airflow_config=None),
        "airflow": dict(sync=300, airflow_config=AIRFLOW_DEFAULTS),
    }
    for name in runs:
        cfg = configs[name]
        spec = make_spec(state, ports, cfg["sync"], cfg["airflow_config"])
        plat = LocalTarget(spec)
        kind = "cold" if not (state / "postgres").exists() else "warm"
        r: dict = {"sync_interval": cfg["sync"], "airflow_config": cfg["airflow_config"]}
        res["runs"][name] = r
        log(f"=== run {name}: {kind} up (sync_interval {cfg['sync']}, config {cfg['airflow_config']})")
        try:
            r[f"up_{kind}"] = timed_up(plat)
            log(f"up ({kind}) took {r[f'up_{kind}']['seconds']} s; first healthy: {r[f'up_{kind}']['first_healthy']}")
            save()
            if name in ("ours10", "airflow"):
                log(f"idle {args.idle:.0f} s before measuring memory")
                time.sleep(args.idle)
                r["memory"] = measure_memory(plat)
                log(
                    f"PSS total {r['memory']['total_mib']} MiB: "
                    + ", ".join(f"{k} {v['pss_mib']}" for k, v in r["memory"]["components"].items())
                )
                save()
            if name == "airflow":
                r["push"] = push_to_live(plat, name, args.baseline_pushes, args.cap, 0, rng)
            else:
                r["push"] = push_to_live(plat, name, args.pushes, 60, min(cfg["sync"], 10), rng)
            log(
                f"push-to-live [{name}]: median {r['push']['median_s']} s, max {r['push']['max_s']} s, capped {r['push']['capped']}"  # noqa: E501
            )
            save()
        finally:
            r["down_s"] = timed_down(plat)
            log(f"down took {r['down_s']} s")
        if name == "ours10":
            # warm restart: down (above) then up again on the same state dir
            try:
                r["up_warm"] = timed_up(plat)
                log(f"up (warm) took {r['up_warm']['seconds']} s")
                save()
            finally:
                r["down2_s"] = timed_down(plat)
    save()
    log(f"results in {out}")
    print_summary(res)
    return 0


def fmt(x, unit="s") -> str:
    return "-" if x is None else f"{x} {unit}"


def print_summary(res: dict) -> None:
    runs = res["runs"]
    print("\n================ SUMMARY ================")
    m = res["machine"]
    print(
        f"machine: nproc {m['nproc']}, {m['cpu']}, RAM {m['mem_total_gib']} GiB, load at start {m['load_at_start']}, {m['airflow']}"  # noqa: E501
    )
    print("\npush-to-live (git push -> listed by /api/v2/dags, polled every 0.1 s)")
    print(f"{'setting':52} {'median':>10} {'max':>10} {'n':>3}  ratio vs baseline")
    base = runs.get("airflow", {}).get("push")
    for name, label in (
        ("ours1", "platform, sync_interval 1, check_interval 1"),
        ("ours10", "platform default, sync_interval 10, check_interval 1"),
        ("airflow", "Airflow default, refresh_interval 300, check 5"),
    ):
        p = runs.get(name, {}).get("push")
        if not p:
            continue
        cap = p["cap_s"]
        med = fmt(p["median_s"]) if p["median_s"] is not None else f"> {cap:.0f} s"
        mx = fmt(p["max_s"]) if p["max_s"] is not None else f"> {cap:.0f} s"
        ratio = ""
        if base and name != "airflow" and p["median_s"]:
            ratio = (
                f"baseline/ours > {cap / p['median_s']:.0f}x"
                if base["median_s"] is None
                else f"{base['median_s'] / p['median_s']:.1f}x"
            )
        print(f"{label:52} {med:>10} {mx:>10} {len(p['pushes']):>3}  {ratio}")
    print("\nstart (LocalTarget.up -> every component healthy)")
    for name in runs:
        for kind in ("up_cold", "up_warm"):
            u = runs[name].get(kind)
            if not u:
                continue
            print(
                f"  {name:8} {kind:8} {u['seconds']:6.1f} s (healthy at {u['healthy_at']} s)  load {u['load_start']} -> {u['load_end']}"  # noqa: E501
            )
            for ph in u["phases"]:
                print(f"      {ph['seconds']:6.2f} s  {ph['phase']}")
            print(f"      first healthy (s since up): {u['first_healthy']}")
            if "cpu_s" in u:
                print(f"      CPU seconds used to start: total {u['cpu_total_s']}: {u['cpu_s']}")
    print("\nidle memory (PSS, MiB, per supervisor program's process tree)")
    mems = {n: runs[n]["memory"] for n in runs if "memory" in runs[n]}
    names = sorted({c for mm in mems.values() for c in mm["components"]})
    print(f"{'component':16}" + "".join(f"{n:>12}" for n in mems))
    for c in names:
        print(f"{c:16}" + "".join(f"{mems[n]['components'].get(c, {}).get('pss_mib', '-'):>12}" for n in mems))
    print(f"{'TOTAL':16}" + "".join(f"{mems[n]['total_mib']:>12}" for n in mems))
    if len(mems) == 2 and "ours10" in mems and "airflow" in mems:
        print(f"ratio Airflow-defaults / ours: {mems['airflow']['total_mib'] / mems['ours10']['total_mib']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
