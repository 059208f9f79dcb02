"""The seed's verification table read from the RUNNING containers of a release (``verify --target
kubernetes``): each row runs a command in a container through the API server (``kubectl exec``'s path),
so it proves what Airflow sees there, not only that objects exist.

| seed row          | row                      | command, container                                           |
|-------------------|--------------------------|--------------------------------------------------------------|
| Airflow UI access | verify.container.api     | GET /api/v2/monitor/health, api-server                      |
| DAG GitSync       | verify.container.git_sync| ``git rev-parse HEAD`` of git-sync's worktree == branch head |
|                   | verify.container.dags    | ``airflow dags list`` in the scheduler: the repository's DAGs |
| PostgreSQL        | verify.container.database| ``airflow db check`` in the scheduler                         |
| AWS auth (boto3)  | verify.container.aws     | boto3's credentials in the scheduler come from the mounted file |
| (all, from a task)| task.*                   | the platform_selfcheck DAG triggered from the api-server      |
|                   |                          | container; its task runs in a worker pod (checks/selfcheck.py)|
| (serving)         | verify.serving.pods      | the serving Deployment's pods are Running (Ready needs a model) |
|                   | verify.serving.health.POD| GET /health in each serving container: served version vs alias |

No secret is printed: the AWS row shows where boto3 found its credentials and the access key id's last
four characters (as the AWS console does).
"""

from __future__ import annotations

import configparser
import json

from ..gitremote import branch_head
from ..kubernetes import serving as serving_k8s
from ..names import ADMIN_USER
from ..spec import PlatformSpec
from . import selfcheck
from .result import CheckResult, fail, ok, skip, verdict, warn

GIT_SYNC_WORKTREE = "/git/repo"  # the chart's GITSYNC_ROOT (/git) + GITSYNC_LINK (repo)
EXEC_TIMEOUT = 120

HEALTH = (
    "import json, urllib.request; "
    "print(urllib.request.urlopen('http://localhost:8080/api/v2/monitor/health', timeout=20).read().decode())"
)
AWS = (
    "import json, boto3; c = boto3.Session().get_credentials(); "
    "print(json.dumps({'method': c.method if c else None, 'tail': (c.access_key or '')[-4:] if c else ''}))"
)


def exec_in(
    api, ns: str, pod: str, container: str, command: list[str], timeout: float = EXEC_TIMEOUT, stdin: str | None = None
):
    """(exit code, stdout, stderr) of ``command`` run in a container, as ``kubectl exec`` does; ``stdin``
    is written to it (a secret goes there, never into ``command``: argv is visible in the pod)."""
    from kubernetes import client
    from kubernetes.stream import stream

    resp = stream(
        client.CoreV1Api(api).connect_get_namespaced_pod_exec,
        pod,
        ns,
        container=container,
        command=command,
        stderr=True,
        stdout=True,
        stdin=stdin is not None,
        tty=False,
        _preload_content=False,
    )
    out, err = [], []
    if stdin is not None:
        resp.write_stdin(stdin)
    resp.run_forever(timeout=timeout)
    out.append(resp.read_stdout() or "")
    err.append(resp.read_stderr() or "")
    rc = resp.returncode
    resp.close()
    return (rc if rc is not None else -1), "".join(out), "".join(err)


def _last_json(rc: int, out: str) -> dict:
    """The JSON object a command printed as its last line ({} when it failed or printed none)."""
    try:
        value = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
    except (ValueError, IndexError):
        return {}
    return value if isinstance(value, dict) else {}


def _pod(api, ns: str, release: str, component: str, container: str):
    """A running, ready pod of the release's ``component`` that has ``container``, or None."""
    from kubernetes import client

    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"release={release},component={component}")
    for p in pods.items:
        ready = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        if p.status.phase == "Running" and ready and any(c.name == container for c in p.spec.containers):
            return p.metadata.name
    return None


def _dag_ids(out: str) -> list[str]:
    """The dag ids of ``airflow dags list -o json`` (its JSON array may follow log lines on stdout, which
    can start with '[' too: each line that starts one is tried)."""
    end = out.rfind("]")
    offset = 0
    for line in out.splitlines(keepends=True):
        if line.lstrip().startswith("["):
            try:
                items = json.loads(out[offset : end + 1])
                return sorted(d["dag_id"] for d in items)
            except (ValueError, KeyError, TypeError):
                pass
        offset += len(line)
    return []


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text[-n:]


def _local_key_tail(spec: PlatformSpec) -> str | None:
    if not spec.aws.credentials_file:
        return None
    parser = configparser.RawConfigParser()
    try:
        parser.read(spec.path(spec.aws.credentials_file))
        return parser.get(spec.aws.profile, "aws_access_key_id").strip()[-4:]
    except (configparser.Error, OSError):
        return None


def _simulated(api, ns: str, selector: str) -> bool:
    """True when every pod ``selector`` picks is on a kwok node (simulated: no container runs there)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    nodes = {p.spec.node_name for p in core.list_namespaced_pod(ns, label_selector=selector).items}
    nodes.discard(None)
    if not nodes:
        return False
    fake = {
        n.metadata.name
        for n in core.list_node().items
        if (n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
    }
    return nodes <= fake


def container_rows(api, spec: PlatformSpec) -> list[CheckResult]:
    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    rows: list[CheckResult] = []
    try:
        simulated = _simulated(api, ns, f"release={release}")
    except Exception:  # noqa: BLE001 - listing nodes needs a cluster-wide permission many users lack
        simulated = False
    if simulated:
        return [skip("verify.container", "the release's pods run on simulated (kwok) nodes: no container to read")]
    fix_logs = f"kubectl -n {ns} logs -l release={release},component=%s --all-containers --tail 50"

    pod = _pod(api, ns, release, "api-server", "api-server")
    if pod is None:
        rows.append(fail("verify.container.api", "no ready api-server pod", fix_logs % "api-server"))
    else:
        rc, out, err = exec_in(api, ns, pod, "api-server", ["python", "-c", HEALTH])
        health = _last_json(rc, out)
        states = {k: (v or {}).get("status") for k, v in health.items() if isinstance(v, dict)}
        good = states.get("metadatabase") == "healthy" and states.get("scheduler") == "healthy"
        saw = states or _tail(out + err) or f"exit {rc}"
        rows.append(
            verdict("verify.container.api", good, f"{pod}: /api/v2/monitor/health: {saw}", fix_logs % "scheduler")
        )

    sched = _pod(api, ns, release, "scheduler", "scheduler")
    if sched is None:
        rows.append(fail("verify.container.database", "no ready scheduler pod", fix_logs % "scheduler"))
    else:
        rc, out, err = exec_in(api, ns, sched, "scheduler", ["airflow", "db", "check"])
        rows.append(
            verdict(
                "verify.container.database",
                rc == 0,
                f"{sched}: `airflow db check`: "
                + ("the metadata database answers" if rc == 0 else f"exit {rc}: {_tail(err or out)}"),
                f"check the Secret {spec.secrets.metadata_secret} (key connection) and that the database "
                "accepts connections from the pods' network",
            )
        )
        rc, out, err = exec_in(api, ns, sched, "scheduler", ["airflow", "dags", "list", "-o", "json"])
        dags = _dag_ids(out) if rc == 0 else []
        rows.append(
            verdict(
                "verify.container.dags",
                bool(dags),
                f"{sched}: {len(dags)} DAGs: {', '.join(dags[:8])}"
                if dags
                else f"{sched}: no DAG in the database (exit {rc}: {_tail(err + ' ' + out, 200)})",
                f"check dags.repo/branch/sub_path; {fix_logs % 'dag-processor'}",
            )
        )
        rc, out, err = exec_in(api, ns, sched, "scheduler", ["python", "-c", AWS])
        aws = _last_json(rc, out)
        want = _local_key_tail(spec)
        if aws.get("method") == "shared-credentials-file" and (want is None or aws.get("tail") == want):
            rows.append(
                ok(
                    "verify.container.aws",
                    f"{sched}: boto3 reads the mounted credentials file (key ...{aws.get('tail')}"
                    f"{', as platform.yaml' if want else ''})",
                )
            )
        else:
            rows.append(
                fail(
                    "verify.container.aws",
                    f"{sched}: boto3 credentials: {aws or _tail(err) or f'exit {rc}'}"
                    + (f" (platform.yaml's key ends ...{want})" if want else ""),
                    f"check the Secret {spec.secrets.aws_secret} mounted at /home/airflow/.aws",
                )
            )

    if spec.dags.delivery == "git-sync":
        gs = _pod(api, ns, release, "dag-processor", "git-sync") or _pod(api, ns, release, "scheduler", "git-sync")
        if gs is None:
            rows.append(
                fail("verify.container.git_sync", "no ready pod with a git-sync container", fix_logs % "dag-processor")
            )
        else:
            rc, out, err = exec_in(api, ns, gs, "git-sync", ["git", "-C", GIT_SYNC_WORKTREE, "rev-parse", "HEAD"])
            synced = out.strip() if rc == 0 else ""
            head = branch_head(spec)
            if synced and (head is None or head == synced):
                note = "== the branch head" if head else "(the remote is not reachable from here to compare)"
                rows.append(ok("verify.container.git_sync", f"{gs}: git-sync has {synced[:12]} {note}"))
            elif synced:
                rows.append(
                    fail(
                        "verify.container.git_sync",
                        f"{gs}: git-sync has {synced[:12]}, the branch head is {head[:12]}",
                        f"it syncs every {spec.dags.sync_interval}s; if it stays behind: "
                        f"kubectl -n {ns} logs {gs} -c git-sync",
                    )
                )
            else:
                rows.append(
                    fail(
                        "verify.container.git_sync",
                        f"{gs}: no synced worktree ({_tail(err) or f'exit {rc}'})",
                        f"kubectl -n {ns} logs {gs} -c git-sync",
                    )
                )
    else:
        rows.append(skip("verify.container.git_sync", "dags.delivery is bundle: verify.container.dags shows the DAGs"))
    # The rows from where tasks run: the self-check DAG, its task in a worker pod (checks/selfcheck.py).
    if all(r.status == "ok" for r in rows if r.name == "verify.container.api"):
        rows += _selfcheck_rows(api, spec, pod)
    else:
        rows.append(skip("task.selfcheck", "not run: the API server above does not answer"))
    return rows


def _selfcheck_rows(api, spec: PlatformSpec, api_pod: str) -> list[CheckResult]:
    """The platform_selfcheck DAG run on the cluster (its task in a worker pod), triggered from ``api_pod``'s
    api-server container (checks/selfcheck.py: the program and the report's rows)."""
    from ..keystore import ADMIN_PASSWORD

    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    fix_logs = f"kubectl -n {ns} logs -l release={release},component=scheduler --tail 50"
    password_file = spec.secrets_dir / ADMIN_PASSWORD
    try:
        password = password_file.read_text().strip()
    except OSError as err:
        return [
            fail(
                "task.selfcheck",
                f"the admin password {password_file} cannot be read ({err.strerror})",
                "run verify from the folder (and machine) that ran `airflow-gitops deploy`",
            )
        ]
    dag, task, timeout = selfcheck.SELFCHECK_DAG, selfcheck.SELFCHECK_TASK, selfcheck.RUN_TIMEOUT
    command = ["python", "-c", selfcheck.IN_POD, ADMIN_USER, dag, task, str(timeout)]
    rc, out, err = exec_in(api, ns, api_pod, "api-server", command, timeout=timeout + 60, stdin=password + "\n")
    result = _last_json(rc, out)
    if not result:
        return [
            fail("task.selfcheck", f"the self-check could not run in {api_pod}: exit {rc} {_tail(out + err)}", fix_logs)
        ]
    if result.get("error") == "missing":
        return [
            fail(
                "task.selfcheck",
                f"DAG {selfcheck.SELFCHECK_DAG} is not in Airflow ({result['detail']})",
                "keep dags/platform_selfcheck.py from the template in your DAG repository",
            )
        ]
    if result.get("error"):
        fix = {
            "paused": f'unpause it: the UI, or PATCH /api/v2/dags/{selfcheck.SELFCHECK_DAG} {{"is_paused": false}}',
            "login": "the admin password in the secrets folder is not the release's: `airflow-gitops deploy` again",
        }[result["error"]]
        return [fail("task.selfcheck", result["detail"], fix)]
    pod, report = result.get("hostname") or "?", result.get("report")
    where = f"in worker pod {pod}: "
    if not isinstance(report, dict) or "checks" not in report:
        return [
            fail(
                "task.selfcheck",
                f"run {result['run_id']} ended {result['state']} (task {result.get('task_state')}, {pod}) without a "
                "report",
                f"kubectl -n {ns} get pods -l dag_id={selfcheck.SELFCHECK_DAG}; the task's log in the UI; {fix_logs}",
            )
        ]
    saw = f"run {result['run_id']} {result['state']} in worker pod {pod}"
    if result["state"] == "success":
        head = ok("task.selfcheck", saw)
    else:
        head = fail("task.selfcheck", saw, "the failing task.* rows below say what; the task's log in the UI")
    return [head, *selfcheck.report_rows(report, where)]


# --- the serving component ---------------------------------------------------------------------------
SERVING_HEALTH = f"""import json, urllib.error, urllib.request
try:
    r = urllib.request.urlopen('http://127.0.0.1:{serving_k8s.PORT}/health', timeout=20)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
print(json.dumps({{'status': code, 'health': json.loads(body)}}))"""


def health_row(pod: str, status: int, health: dict, spec: PlatformSpec) -> CheckResult:
    """One serving pod's /health answer as a row: the served version against the alias; no model (yet) is
    a skip or a warning, not a failure (a fresh platform has none registered); a registry it cannot
    reach is a failure (the MLflow URI or the network is wrong)."""
    row = f"verify.serving.health.{pod}"
    target = f"{health.get('model')}@{health.get('alias')}"
    served, alias = health.get("served_version"), health.get("alias_version")
    refused = {r.get("version"): r.get("reason") for r in health.get("refused") or []}
    registry = health.get("registry") or "?"
    fix_refused = f"fix the model version the alias points at, or move {target} back; `kubectl logs {pod}`"
    if status == 200 and served is not None:
        if served == alias:
            return ok(row, f"{pod}: serving {target} v{served}, the alias's version")
        if alias in refused:
            return warn(
                row, f"{pod}: serving v{served}; the alias's v{alias} was refused: {refused[alias]}", fix_refused
            )
        return warn(
            row,
            f"{pod}: serving v{served} while the alias points at v{alias} (swapping?)",
            f"it follows the alias every {spec.serving.poll_interval:g}s; if it stays behind: kubectl logs {pod}",
        )
    if registry != "ok":
        return fail(
            row,
            f"{pod}: no model served and the registry is {registry}",
            f"check mlflow.tracking_uri ({health.get('model')} is looked up there) and that the pods reach it",
        )
    if alias in refused:
        return warn(row, f"{pod}: no model served: the alias's v{alias} was refused: {refused[alias]}", fix_refused)
    return skip(
        row,
        f"{pod}: no model served yet: {health.get('reason') or f'HTTP {status}'}",
        f"train and register one (the template's pipeline moves {target})",
    )


def serving_rows(api, spec: PlatformSpec) -> list[CheckResult]:
    """The serving Deployment: its pods Running; each one's /health, read in its container."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if not spec.serving.enabled:
        return [skip("verify.serving", "serving.enabled is false")]
    ns, name, selector = spec.kubernetes.namespace, serving_k8s.name(spec), serving_k8s.label_selector(spec)
    fix = f"kubectl -n {ns} describe pods -l {selector}; kubectl -n {ns} logs deploy/{name}"
    try:
        dep = client.AppsV1Api(api).read_namespaced_deployment(name, ns, _request_timeout=10)
    except ApiException as err:
        saw = (
            f"no serving Deployment {ns}/{name}" if err.status == 404 else f"cannot read {ns}/{name}: HTTP {err.status}"
        )
        return [fail("verify.serving.pods", saw, "`airflow-gitops deploy` creates it (serving.enabled)")]
    want = dep.spec.replicas if dep.spec.replicas is not None else 1
    pods = [
        p
        for p in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]
    running = [p for p in pods if p.status.phase == "Running"]
    ready = [p for p in running if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
    counts = f"Deployment {name}: {len(running)}/{want} pods running, {len(ready)} ready (ready = a model is loaded)"
    if len(running) < want:
        return [fail("verify.serving.pods", counts, fix)]
    rows = [ok("verify.serving.pods", counts)]
    try:
        simulated = _simulated(api, ns, selector)
    except Exception:  # noqa: BLE001 - listing nodes needs a cluster-wide permission many users lack
        simulated = False
    if simulated:
        rows.append(skip("verify.serving.health", "the serving pods run on simulated (kwok) nodes: no /health to ask"))
        return rows
    for p in running:
        pod = p.metadata.name
        rc, out, err = exec_in(api, ns, pod, "serving", ["python", "-c", SERVING_HEALTH])
        try:
            answer = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
        except (ValueError, IndexError):
            answer = {}
        if not isinstance(answer.get("health"), dict):
            rows.append(
                fail(f"verify.serving.health.{pod}", f"{pod}: /health: {_tail(err + ' ' + out) or f'exit {rc}'}", fix)
            )
            continue
        rows.append(health_row(pod, answer["status"], answer["health"], spec))
    return rows
