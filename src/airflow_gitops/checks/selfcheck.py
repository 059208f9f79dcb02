"""The ``platform_selfcheck`` DAG as verify rows: the seed's table proven from where tasks run.

Both targets trigger the template's self-check DAG and turn its report (XCom ``return_value``, or
``report`` when it failed) into ``task.*`` rows. Locally the run goes through the API server's URL; on
Kubernetes a short program runs in the api-server container (``kubectl exec``'s path: no port-forward,
the admin password on its stdin, never in argv) and the task runs in a worker pod the KubernetesExecutor
creates, whose name the row shows.
"""

from __future__ import annotations

import json

from ..names import ADMIN_USER
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok

SELFCHECK_DAG = "platform_selfcheck"
SELFCHECK_TASK = "selfcheck"
RUN_TIMEOUT = 420  # a worker pod's start (image, DAG bundle) + the checks; the exec waits a little longer


def report_rows(report: dict, where: str = "") -> list[CheckResult]:
    """``task.NAME`` per check of the self-check's report; ``where`` (e.g. "in worker pod X: ") prefixes each."""
    rows = []
    for name, c in report["checks"].items():
        detail = f"{where}{c.get('detail', '')}"[:300]
        if c.get("ok"):
            rows.append(ok(f"task.{name}", detail))
        else:
            rows.append(
                fail(
                    f"task.{name}",
                    detail,
                    "fix what the detail names (aws.* / mlflow.* in platform.yaml), then `verify` again",
                )
            )
    return rows


# Runs in the api-server container (its Python, the standard library only): reads the admin password from
# stdin, triggers the DAG through the API on localhost, waits, prints ONE JSON line.
IN_POD = r"""
import json, sys, time, urllib.error, urllib.parse, urllib.request
user, dag, task, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
password = sys.stdin.readline().rstrip("\n")
base = "http://localhost:8080"
def call(path, data=None, token=None):
    req = urllib.request.Request(base + path, data=None if data is None else json.dumps(data).encode(),
                                 method="GET" if data is None else "POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")
def out(**kw):
    print(json.dumps(kw)); sys.exit(0)
try:
    token = call("/auth/token", {"username": user, "password": password})["access_token"]
except urllib.error.HTTPError as e:
    out(error="login", detail=f"POST /auth/token: HTTP {e.code}")
try:
    d = call(f"/api/v2/dags/{dag}", token=token)
except urllib.error.HTTPError as e:
    out(error="missing", detail=f"GET /api/v2/dags/{dag}: HTTP {e.code}")
if d.get("is_paused"):
    out(error="paused", detail=f"DAG {dag} is paused")
run = call(f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None}, token)
run_url = f"/api/v2/dags/{dag}/dagRuns/" + urllib.parse.quote(run["dag_run_id"], safe="")
deadline = time.monotonic() + timeout
while True:
    state = call(run_url, token=token)["state"]
    if state in ("success", "failed") or time.monotonic() > deadline:
        break
    time.sleep(2)
ti = call(f"{run_url}/taskInstances/{task}", token=token)
report = None
for key in ("return_value", "report"):
    try:
        value = call(f"{run_url}/taskInstances/{task}/xcomEntries/{key}", token=token)["value"]
        report = json.loads(value) if isinstance(value, str) else value
        if report:
            break
    except (urllib.error.HTTPError, ValueError):
        continue
out(run_id=run["dag_run_id"], state=state, hostname=ti.get("hostname"), executor=ti.get("executor"),
    task_state=ti.get("state"), try_number=ti.get("try_number"), report=report)
"""


def kubernetes_rows(api, spec: PlatformSpec, exec_in, api_pod: str | None) -> list[CheckResult]:
    """Run the self-check DAG on the cluster (its task in a worker pod) and return its rows.

    ``exec_in``/``api_pod``: how to run a command in the release's api-server container, and which pod
    (checks/kube_containers.py finds it; None: none ready)."""
    from ..keystore import ADMIN_PASSWORD

    ns, release = spec.kubernetes.namespace, spec.kubernetes.release
    fix_logs = f"kubectl -n {ns} logs -l release={release},component=scheduler --tail 50"
    if api_pod is None:
        return [fail("task.selfcheck", "no ready api-server pod to trigger the self-check from", fix_logs)]
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
    command = ["python", "-c", IN_POD, ADMIN_USER, SELFCHECK_DAG, SELFCHECK_TASK, str(RUN_TIMEOUT)]
    rc, out, err = exec_in(api, ns, api_pod, "api-server", command, timeout=RUN_TIMEOUT + 60, stdin=password + "\n")
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = None
    if rc != 0 or not isinstance(result, dict):
        tail = " ".join((out + err).split())[-300:]
        return [fail("task.selfcheck", f"the self-check could not run in {api_pod}: exit {rc} {tail}", fix_logs)]
    if result.get("error") == "missing":
        return [
            fail(
                "task.selfcheck",
                f"DAG {SELFCHECK_DAG} is not in Airflow ({result['detail']})",
                "keep dags/platform_selfcheck.py from the template in your DAG repository",
            )
        ]
    if result.get("error"):
        fix = {
            "paused": f'unpause it: the UI, or PATCH /api/v2/dags/{SELFCHECK_DAG} {{"is_paused": false}}',
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
                f"kubectl -n {ns} get pods -l dag_id={SELFCHECK_DAG}; the task's log in the UI; {fix_logs}",
            )
        ]
    saw = f"run {result['run_id']} {result['state']} in worker pod {pod}"
    if result["state"] == "success":
        head = ok("task.selfcheck", saw)
    else:
        head = fail("task.selfcheck", saw, "the failing task.* rows below say what; the task's log in the UI")
    return [head, *report_rows(report, where)]
