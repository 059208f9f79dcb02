"""``airflow-gitops check`` against a plain ``DagBag`` on the same DAG folder (issue 21).

Alternating rounds, one process tree per measurement, in this order rotated per round:

* ``dagbag``: ``python -c 'DagBag(dag_folder=...)'``, serial, one process: interpreter start and the
  Airflow import included, as check's figures include the CLI's;
* ``check -j N`` for each ``--jobs``: ``airflow-gitops check --no-tests --json --dags-folder dags``
  (a fork per file from one parent that imported Airflow once; ``-j 2`` is the default, ``-j 1`` serial);
* ``before`` (with ``--before-src``): the same command from an older tree's ``src/`` (``git archive``),
  e.g. the commit before issue 21's changes.

Wall seconds and CPU seconds (user + sys of the whole process tree, from ``wait4``) per run, the 1-min
load average when it started; median (range) per variant and the ratios to ``dagbag``. Other work on
the machine skews wall times: CPU seconds are the steadier figure. Every check run must find the DAG
ids the DagBag finds, else the script exits 1.

    .venv/bin/python bench/bench_check.py                         # Airflow's example DAGs, 3 rounds
    .venv/bin/python bench/bench_check.py --rounds 5 --jobs 1,2 --before-src /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAGBAG = """
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("@@RESULT@@" + json.dumps({"dags": sorted(bag.dags), "errors": sorted(bag.import_errors)}))
"""
CLI = "import sys; from airflow_gitops.cli import app; sys.argv[0] = 'airflow-gitops'; app()"


def example_dags() -> Path:
    import airflow

    return Path(airflow.__file__).parent / "example_dags"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float, str]:
    """(wall s, CPU s of the process tree, load average at start, stdout)."""
    load = os.getloadavg()[0]
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode()
    return wall, usage.ru_utime + usage.ru_stime, load, text if proc.returncode in (0, 1) else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, help="a DAG folder (default: Airflow's example_dags)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", default="1,2", help="check -j values, comma-separated")
    ap.add_argument("--before-src", type=Path, help="an older airflow-gitops src/ to time as 'before'")
    ap.add_argument("--json", type=Path, help="write every run here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        repo = work / "repo"
        shutil.copytree(args.folder or example_dags(), repo / "dags", ignore=shutil.ignore_patterns("__pycache__"))
        n_files = sum(1 for p in (repo / "dags").rglob("*.py"))
        home = work / "home"
        home.mkdir()
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        check = [sys.executable, "-c", CLI, "check", str(repo), "--dags-folder", "dags", "--no-tests", "--json"]
        variants: dict[str, tuple[list[str], dict[str, str]]] = {
            "dagbag": ([sys.executable, "-c", DAGBAG, str(repo / "dags")], base),
        }
        for j in [int(x) for x in args.jobs.split(",") if x]:
            variants[f"check -j {j}"] = ([*check, "--jobs", str(j)], base)
        if args.before_src:
            variants["before"] = (check, {**base, "PYTHONPATH": str(args.before_src.resolve())})

        runs: dict[str, list[dict]] = {name: [] for name in variants}
        names = list(variants)
        print(f"{n_files} .py files in {args.folder or 'example_dags'}; {os.cpu_count()} CPUs", flush=True)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                cmd, env = variants[name]
                wall, cpu, load, out = timed(cmd, env, work)
                if name == "dagbag":
                    marker = out.rfind("@@RESULT@@")
                    dags = json.loads(out[marker + 10 :])["dags"] if marker >= 0 else None
                else:
                    try:
                        dags = sorted(json.loads(out)["dags"])
                    except (ValueError, KeyError):
                        dags = None
                if dags is None:
                    print(f"{name}: no result", file=sys.stderr)
                    return 1
                runs[name].append({"wall": wall, "cpu": cpu, "load": load, "dags": len(dags), "_ids": dags})
                print(
                    f"round {r + 1} {name:12} wall {wall:6.2f} s  CPU {cpu:6.2f} s  load {load:5.2f}  {len(dags)} DAGs"
                )
        ref = runs["dagbag"][0]["_ids"]
        for name, rs in runs.items():
            if any(x["_ids"] != ref for x in rs):
                print(f"{name} found other DAG ids than the DagBag", file=sys.stderr)
                return 1

        def med(name: str, key: str) -> float:
            return statistics.median(x[key] for x in runs[name])

        print()
        print(f"{'':14}{'wall s median (range)':>26}{'CPU s median (range)':>26}{'load':>12}{'ratio wall / CPU':>20}")
        for name, rs in runs.items():
            walls, cpus, loads = [x["wall"] for x in rs], [x["cpu"] for x in rs], [x["load"] for x in rs]
            wall = f"{med(name, 'wall'):.2f} ({min(walls):.2f}-{max(walls):.2f})"
            cpu = f"{med(name, 'cpu'):.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
            ratio = f"{med(name, 'wall') / med('dagbag', 'wall'):.2f}x / {med(name, 'cpu') / med('dagbag', 'cpu'):.2f}x"
            print(f"{name:14}{wall:>26}{cpu:>26}{f'{min(loads):.1f}-{max(loads):.1f}':>12}{ratio:>20}")
        if args.json:
            for rs in runs.values():
                for x in rs:
                    x.pop("_ids")
            args.json.write_text(json.dumps(runs, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
