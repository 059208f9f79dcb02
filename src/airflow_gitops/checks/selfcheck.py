"""The ``platform_selfcheck`` DAG as verify rows: the seed's table proven from where tasks run.

Both targets trigger the template's self-check DAG and turn its report (XCom ``return_value``, or
``report`` when it failed) into ``task.*`` rows. Locally the run goes through the API server's URL; on
Kubernetes a short program runs in the api-server container (``kubectl exec``'s path: no port-forward,
the admin password on its stdin, never in argv) and the task runs in a worker pod the KubernetesExecutor
creates, whose name the row shows.
"""

from __future__ import annotations

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
