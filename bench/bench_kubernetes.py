"""Bench: the seed's platform on the real Kubernetes node beside the local target (issue 19 §4).

    .venv/bin/python bench/bench_kubernetes.py [--json out.json] [--skip-local]

One run, side by side:

* **Kubernetes** (the real node of scripts/kube-up.sh: containerd + runc, our images): the real-node test
  ``tests/test_chart_real_node.py::test_the_seed_platform_runs_on_the_real_node`` for both deliveries, with
  ``AIRFLOW_GITOPS_BENCH_JSON`` set; it records (never asserts on) ``deploy`` -> every pod Ready, push ->
  the DAG listed by the API (git-sync vs GitDagBundle), and for the git-sync variant the template's
  ``ml_training_pipeline`` with a pod per task: each worker pod created -> scheduled -> the git-sync clone
  (init container) -> container running -> the task started (Python, the task SDK, the DAG's imports) ->
  the task's run -> pod finished, the pipeline's wall time, and the working set of every pod of the release
  (the kubelet's summary API, cAdvisor) after the run. The test's own setup (images, PostgreSQL, sshd, S3,
  MLflow) is not in the figures.
* **Local** (the baseline the KubernetesExecutor is compared with): bench/bench_pipeline.py, the same
  pipeline on the local target's LocalExecutor (its own platform and ports).
* **Chart defaults** where ours differ, read from the chart in ../shared and from Airflow's own defaults.

Needs what the real-node tests need (root, Go, containerd, ...: scripts/test.sh installs it); ~20 min.
The machine's load skews every figure: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART_TGZ = REPO.parent / "shared" / "reference" / "airflow-helm-chart-1.21.0" / "airflow-1.21.0.tgz"
TEST = "tests/test_chart_real_node.py::test_the_seed_platform_runs_on_the_real_node"
MIB = 1024 * 1024


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_kubernetes(out: Path) -> list[dict]:
    out.unlink(missing_ok=True)
    env = {**os.environ, "AIRFLOW_GITOPS_BENCH_JSON": str(out), "CI": os.environ.get("CI", "true")}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", TEST, "-x", "-q", "-s", "-p", "no:cacheprovider"], cwd=REPO, env=env
    )
    print(f"(the real-node test took {time.monotonic() - t0:.0f} s in all, setup included; exit {proc.returncode})")
    if proc.returncode != 0 or not out.exists():
        raise SystemExit("the real-node test failed: no figures (its output above says why)")
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def run_local(out: Path) -> dict | None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_pipeline.py"), "--runs", "2", "--json", str(out)]
    )
    if proc.returncode != 0 or not out.exists():
        print("bench_pipeline.py failed: no local figures")
        return None
    return json.loads(out.read_text())


def chart_defaults() -> dict[str, str]:
    with tarfile.open(CHART_TGZ) as tar:
        values = yaml.safe_load(tar.extractfile("airflow/values.yaml").read())
    from airflow.configuration import conf

    git_sync = values["dags"]["gitSync"]
    return {
        "git-sync period": str(git_sync.get("period")),
        "git-sync depth": str(git_sync.get("depth")),
        "[dag_processor] refresh_interval": f"{conf.get_default_value('dag_processor', 'refresh_interval')} s",
        "worker pod securityContext": json.dumps(values.get("securityContexts", {}).get("pod") or {}),
    }


def _s(x, fmt: str = "5.1f") -> str:
    return f"{x:{fmt}}" if isinstance(x, (int, float)) else "    -"


def report(k8s: list[dict], local: dict | None, ours: dict[str, str]) -> dict:
    by = {f["delivery"]: f for f in k8s}
    print(f"\n== bench_kubernetes (load average {_load()}) ==")
    print("\ndeploy -> every pod Ready, push -> DAG listed by the API:")
    print("  delivery   deploy    push->synced  push->listed")
    for d, f in sorted(by.items()):
        print(
            f"  {d:<9} {_s(f.get('deploy_ready_s'), '6.0f')} s  {_s(f.get('push_to_synced_s'))} s      "
            f"{_s(f.get('push_to_listed_s'))} s"
        )
    pipe = (by.get("git-sync") or {}).get("pipeline")
    summary: dict = {"kubernetes": k8s, "local": local}
    if pipe:
        print("\nml_training_pipeline, a KubernetesExecutor pod per task (s; pod timestamps have 1 s resolution):")
        print("  task            scheduled  clone  created->running  running->task  task   task->pod end  total")
        for task, t in pipe["tasks"].items():
            print(
                f"  {task:<15} {_s(t['scheduled_s'])}     {_s(t['clone_s'])}  {_s(t['created_to_running_s'])}"
                f"             {_s(t['running_to_task_start_s'])}          {_s(t['task_s'])}  "
                f"{_s(t['task_end_to_pod_end_s'])}          {_s(t['created_to_finished_s'])}"
            )
        overhead = [
            (t["created_to_finished_s"] or 0) - (t["task_s"] or 0)
            for t in pipe["tasks"].values()
            if t["created_to_finished_s"] is not None
        ]
        if overhead:
            print(f"  per-pod overhead (pod lifetime - task run): mean {sum(overhead) / len(overhead):.1f} s")
        local_wall = None
        if local and local.get("runs"):
            local_wall = min(r["end_to_end_s"] for r in local["runs"] if r["state"] == "success")
        ratio = f"{pipe['wall_s'] / local_wall:.1f}x" if local_wall else "-"
        print(
            f"\npipeline wall time: KubernetesExecutor {pipe['wall_s']:.1f} s vs the local target's LocalExecutor "
            f"{_s(local_wall)} s (best of its runs): {ratio}"
        )
        summary["wall_ratio"] = pipe["wall_s"] / local_wall if local_wall else None
    mem = (by.get("git-sync") or {}).get("release_memory") or {}
    if mem:
        total = sum(mem.values())
        print(f"\nmemory of the release (working set, after the run): {total / MIB:.0f} MiB in {len(mem)} pods")
        for pod, b in sorted(mem.items(), key=lambda kv: -kv[1]):
            print(f"  {pod:<55} {b / MIB:6.0f} MiB")
        summary["release_memory_mib"] = total / MIB
    print("\nthe chart's defaults where ours differ:")
    for key, default in chart_defaults().items():
        print(f"  {key:<34} chart {default:<40} ours {ours.get(key, '-')}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-local", action="store_true", help="no local baseline (bench_pipeline.py)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-kubernetes-"))
    print(f"load average before: {_load()}")
    local = None if args.skip_local else run_local(tmp / "local.json")
    k8s = run_kubernetes(tmp / "k8s.jsonl")
    # ours: what the git-sync variant's deploy wrote into values.yaml (the seed's platform.yaml)
    ours = {
        k: str(v) for k, v in (next((f for f in k8s if f["delivery"] == "git-sync"), {}).get("values") or {}).items()
    }
    summary = report(k8s, local, ours)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
