"""``airflow-gitops verify``: the seed's verification table, proven on the running platform.

| seed row            | rows here                                                              |
|---------------------|------------------------------------------------------------------------|
| Airflow UI access   | verify.api + verify.component.* (``/api/v2/monitor/health`` + supervisor) |
| DAG GitSync         | verify.dag_sync (parsed commit == branch head); ``--probe``: push-to-live |
| PostgreSQL          | verify.postgres (the metadata database answers, with its version)      |
| AWS auth (boto3)    | task.* from the ``platform_selfcheck`` DAG, run by Airflow itself;       |
|                     | verify.s3_credentials.* with each component's real environment           |

On Kubernetes the same rows are read from the running containers (checks/kube_containers.py).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from ..contract import PROBE_BRANCH, PROBE_BUNDLE
from ..dburl import connect, explain_connect_error
from ..gitremote import clone_url, git_env
from ..kubernetes.target import KubernetesTarget
from ..local.layout import dag_runtime_env
from ..local.platform import LocalTarget, PlatformStatus
from ..spec import PlatformSpec
from ..target import Target
from .kube import kube_checks
from .kube_containers import container_rows
from .kube_containers import serving_rows as kube_serving_rows
from .process_s3 import s3_credential_rows
from .result import CheckResult, emit, fail, ok, skip, verdict, warn
from .selfcheck import SELFCHECK_DAG, SELFCHECK_TASK, report_rows
from .serving import serving_rows

PROBE_FILE = ".airflow-gitops-probe"


def _components(status: PlatformStatus) -> list[CheckResult]:
    rows = []
    for name, info in status.components.items():
        if info.healthy:
            rows.append(ok(f"verify.component.{name}", f"{info.state}, healthy (pid {info.pid})"))
        else:
            rows.append(
                fail(
                    f"verify.component.{name}",
                    f"{name} is {info.state}, not healthy",
                    f"read its log: `airflow-gitops logs {name}` ({info.log}); `airflow-gitops up` restarts it",
                )
            )
    return rows


def _api(platform: LocalTarget, status: PlatformStatus) -> CheckResult:
    try:
        client = platform.client()
        health = client.health()
    except Exception as err:  # noqa: BLE001
        return fail(
            "verify.api",
            f"{status.api_url} does not answer ({type(err).__name__})",
            "`airflow-gitops logs api-server`; `airflow-gitops up` restarts it",
        )
    bad = [k for k, v in health.items() if isinstance(v, dict) and v.get("status") not in (None, "healthy")]
    if bad:
        return fail(
            "verify.api",
            f"{status.api_url}/api/v2/monitor/health reports unhealthy: {', '.join(bad)}",
            f"`airflow-gitops logs {bad[0].replace('_', '-')}`",
        )
    return ok(
        "verify.api",
        f"UI/API at {status.api_url} answers; monitor/health: "
        + ", ".join(f"{k} {v.get('status')}" for k, v in health.items() if isinstance(v, dict)),
    )


def _dag_sync(platform: LocalTarget, status: PlatformStatus, spec: PlatformSpec) -> CheckResult:
    head = status.branch_head
    if not head:
        return fail(
            "verify.dag_sync",
            f"cannot read the head of {status.branch} in {status.dag_repo}",
            "run `airflow-gitops doctor` (git rows)",
        )
    deadline = time.monotonic() + 3 * spec.dags.sync_interval + 30
    parsed = status.parsed_commit
    while parsed != head and time.monotonic() < deadline:
        time.sleep(1)
        parsed = platform.parsed_commit()
    if parsed == head:
        return ok("verify.dag_sync", f"Airflow parsed {head[:12]}, the head of {status.branch}")
    return fail(
        "verify.dag_sync",
        f"Airflow parsed {(parsed or 'nothing')[:12]} but {status.branch} is at {head[:12]} "
        f"(waited {3 * spec.dags.sync_interval + 30} s)",
        "`airflow-gitops logs dag-processor`; `airflow-gitops doctor` checks sub_path and DAG imports",
    )


def _probe(platform: LocalTarget, spec: PlatformSpec) -> CheckResult:
    """Push a marker commit to the probe branch (never dags.branch), time until Airflow's DAG processor
    has it, then move the branch back so the marker commit is referenced by nothing."""
    if spec.dags.repo is not None:
        return skip(
            "verify.probe",
            f"not probed: the probe pushes to the branch {PROBE_BRANCH!r}, which only the local repository "
            f"carries; {spec.dags.repo} is yours (verify.dag_sync above shows it is in sync)",
            "probe with the local repository (dags.repo unset)",
        )
    env = {
        **git_env(spec),
        "GIT_AUTHOR_NAME": "airflow-gitops verify",
        "GIT_AUTHOR_EMAIL": "verify@localhost",
        "GIT_COMMITTER_NAME": "airflow-gitops verify",
        "GIT_COMMITTER_EMAIL": "verify@localhost",
    }
    with tempfile.TemporaryDirectory(prefix="airflow-gitops-probe-") as tmp:
        work = Path(tmp) / "repo"

        def git(*args: str) -> str:
            proc = subprocess.run(
                ["git", *args], cwd=work if work.exists() else tmp, env=env, capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip()[-300:])
            return proc.stdout.strip()

        try:
            git("clone", "-q", "--depth", "1", "--branch", PROBE_BRANCH, clone_url(spec.dag_repo_url), str(work))
            base = git("rev-parse", "HEAD")
            (work / PROBE_FILE).write_text(f"verify --probe at {time.time():.3f}\n")
            git("add", "-f", PROBE_FILE)
            git("commit", "-q", "-m", "airflow-gitops verify --probe marker")
            sha = git("rev-parse", "HEAD")
            git("push", "-q", "origin", f"HEAD:refs/heads/{PROBE_BRANCH}")
        except RuntimeError as err:
            return fail("verify.probe", f"could not push the marker commit: {err}", "`airflow-gitops up` recreates it")
        try:
            pushed = time.monotonic()
            timeout = 10 * spec.dags.sync_interval + 60
            while time.monotonic() - pushed < timeout:
                if platform.parsed_commit(PROBE_BUNDLE) == sha:
                    seconds = time.monotonic() - pushed
                    return ok(
                        "verify.probe",
                        f"marker {sha[:12]} live {seconds:.1f} s after push to {PROBE_BRANCH} "
                        f"(dags.sync_interval {spec.dags.sync_interval} s; {spec.dags.branch} untouched)",
                    )
                time.sleep(0.5)
            return fail(
                "verify.probe",
                f"marker {sha[:12]} not synced {timeout} s after push",
                "`airflow-gitops logs dag-processor`; check dags.sync_interval",
            )
        finally:
            git("push", "-q", "--force", "origin", f"{base}:refs/heads/{PROBE_BRANCH}")


def _postgres(platform: LocalTarget) -> CheckResult:
    url = platform.database_url()
    try:
        conn = connect(url)
    except Exception as err:  # noqa: BLE001
        saw, fix = explain_connect_error(err, url)
        return fail("verify.postgres", saw, fix)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM dag")
            dags = cur.fetchone()[0]
    finally:
        conn.close()
    return ok("verify.postgres", f"the metadata database answers: PostgreSQL {version}, {dags} DAGs registered")


def _selfcheck(platform: LocalTarget) -> list[CheckResult]:
    client = platform.client()
    try:
        if SELFCHECK_DAG not in client.dag_ids():
            return [
                fail(
                    "task.selfcheck",
                    f"DAG {SELFCHECK_DAG} is not in Airflow",
                    "keep dags/platform_selfcheck.py from the template in your DAG repository",
                )
            ]
        run_id = client.trigger(SELFCHECK_DAG)
        run = client.wait_run(SELFCHECK_DAG, run_id, timeout=300)
    except Exception as err:  # noqa: BLE001 - PlatformError from the client, HTTP errors
        fix = getattr(err, "fix", "") or "`airflow-gitops logs scheduler`"
        return [fail("task.selfcheck", f"could not run {SELFCHECK_DAG}: {str(err)[:300]}", fix)]
    report = None
    for key in ("return_value", "report"):
        try:
            report = client.xcom(SELFCHECK_DAG, run_id, SELFCHECK_TASK, key=key)
            if report:
                break
        except Exception:  # noqa: BLE001 - no XCom under that key
            continue
    if not isinstance(report, dict) or "checks" not in report:
        return [
            fail(
                "task.selfcheck",
                f"run {run_id} ended {run.get('state')} without a report",
                f"read the task log in the UI ({platform.layout.api_url}) or `airflow-gitops logs scheduler`",
            )
        ]
    return report_rows(report)


def run_verify_local(platform: LocalTarget, *, probe: bool) -> list[CheckResult]:
    spec = platform.spec
    status = platform.status()
    if not status.running:
        return [fail("verify.running", "the local platform is not running", "`airflow-gitops up`")]
    rows = [_api(platform, status), *_components(status)]
    rows.append(_dag_sync(platform, status, spec))
    if probe:
        rows.append(_probe(platform, spec))
    rows.append(_postgres(platform))
    if rows[0].status == "ok" and all(r.status != "fail" for r in rows if r.name.startswith("verify.component")):
        rows += _selfcheck(platform)
    else:
        rows.append(skip("task.selfcheck", "not run: fix the failing components first"))
    # The credentials boto3 really uses in a task, MLflow and serving (their environment, not the files).
    rows += s3_credential_rows(platform)
    lay = platform.layout
    if lay.serving_url:
        rows += serving_rows(lay.serving_url, dag_runtime_env(lay))
    return rows


def run_verify_kubernetes(target: KubernetesTarget, *, probe: bool) -> list[CheckResult]:
    spec = target.spec
    rows = kube_checks(spec)
    if any(r.status == "fail" for r in rows if r.name == "kube.cluster"):
        return rows
    from ..kubernetes.cluster import connect

    try:
        api = connect(spec)
    except Exception:  # noqa: BLE001 - kube.cluster above already says why
        return rows
    return rows + _release_rows(api, spec) + kube_serving_rows(api, spec)


def _release_rows(api, spec: PlatformSpec) -> list[CheckResult]:
    """Every workload of the release has its pods ready; the migrate and create-user Jobs completed."""
    from kubernetes import client

    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
    selector = f"release={release}"
    workloads = [("Deployment", d) for d in apps.list_namespaced_deployment(ns, label_selector=selector).items]
    workloads += [("StatefulSet", d) for d in apps.list_namespaced_stateful_set(ns, label_selector=selector).items]
    if not workloads:
        return [fail("verify.release", f"no workload of release {release} in {ns}", "`airflow-gitops deploy`")]
    rows = []
    for kind, w in workloads:
        want, ready = w.spec.replicas or 0, (w.status.ready_replicas or 0)
        rows.append(
            verdict(
                f"verify.workload.{w.metadata.name}",
                ready >= want,
                f"{kind} {w.metadata.name}: {ready}/{want} pods ready",
                f"kubectl -n {ns} describe {kind.lower()} {w.metadata.name}; kubectl -n {ns} logs ...",
            )
        )
    for job in batch.list_namespaced_job(ns, label_selector=selector).items:
        done = bool(job.status.succeeded)
        rows.append(
            verdict(
                f"verify.job.{job.metadata.name}",
                done,
                f"Job {job.metadata.name} {'completed' if done else 'has not completed'}",
                f"kubectl -n {ns} logs job/{job.metadata.name}",
            )
        )
    have = {r.name for r in rows}
    rows += [r for r in _hook_rows(api, ns, release) if r.name not in have]
    if all(r.status == "ok" for r in rows):
        rows += container_rows(api, spec)
    return rows


def _hook_rows(api, ns: str, release: str) -> list[CheckResult]:
    """The chart's hook Jobs (migrations, create-user: deleted once they succeed) as helm recorded their
    last run in the deployed release (the Secret sh.helm.release.v1.RELEASE.vN: base64 of gzipped JSON)."""
    import base64
    import gzip
    import json

    from kubernetes import client

    try:
        secrets = (
            client.CoreV1Api(api)
            .list_namespaced_secret(ns, label_selector=f"owner=helm,name={release},status=deployed")
            .items
        )
    except Exception:  # noqa: BLE001 - no permission to list secrets: the Secret rows above say so
        return []
    if not secrets:
        return []
    latest = max(secrets, key=lambda x: int((x.metadata.labels or {}).get("version", "0")))
    try:
        data = gzip.decompress(base64.b64decode(base64.b64decode(latest.data["release"])))
        hooks = json.loads(data).get("hooks") or []
    except (KeyError, ValueError, OSError):
        return [warn("verify.hooks", "the helm release record could not be read", "helm -n NAMESPACE status RELEASE")]
    rows = []
    for h in hooks:
        if h.get("kind") != "Job":
            continue
        phase = (h.get("last_run") or {}).get("phase") or "never run"
        name = f"verify.job.{h['name']}"
        if phase == "Succeeded":
            rows.append(ok(name, f"hook Job {h['name']} completed ({', '.join(h.get('events') or [])})"))
        else:
            rows.append(fail(name, f"hook Job {h['name']}: {phase}", f"kubectl -n {ns} logs job/{h['name']}"))
    return rows


# What `verify` runs, by the name a target declares (``Target.name``, the ``--target`` value): the one
# table a new target adds a line to here. A target without a line gets Target.unsupported's message.
VERIFY: dict[str, Callable[..., list[CheckResult]]] = {
    LocalTarget.name: run_verify_local,
    KubernetesTarget.name: run_verify_kubernetes,
}


def verify_command(target: Target, *, probe: bool, as_json: bool, console: Console) -> int:
    run = VERIFY.get(target.name)
    if run is None:
        raise target.unsupported("verify")
    rows = run(target, probe=probe)
    return emit(rows, console, title=f"airflow-gitops verify ({target.name})", as_json=as_json, target=target.name)
