"""Task processes start with the DAGs' libraries already imported (``local.preload``), and that shares no
state between tasks: behaviour only; the speed is measured by ``bench/bench_inner_loop.py``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import DagRepo, wait_for
from pg_fixture import AirflowDb

from airflow_gitops.local import preload
from airflow_gitops.spec import DEFAULT_PRELOAD, SpecError, parse_spec

TEMPLATE = Path(__file__).resolve().parents[1] / "src/airflow_gitops/dag_repo/template/dags"


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _task_imports() -> set[str]:
    """Modules the template's task code imports inside functions (what a task process would import)."""
    found: set[str] = set()
    for path in TEMPLATE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
    return {m for m in found if m.split(".")[0] not in ("mlops_common", "airflow")}


def test_the_default_preload_covers_every_library_the_template_tasks_import():
    wanted = sorted(_task_imports())
    assert {"pandas", "sklearn.ensemble", "mlflow", "boto3"} <= set(wanted)  # the walker sees them
    missing = _child(
        "import json, sys\n"
        "from airflow_gitops.local import preload\n"
        "from airflow_gitops.spec import DEFAULT_PRELOAD\n"
        "preload.preload(preload.modules_for(list(DEFAULT_PRELOAD)))\n"
        f"print(json.dumps([m for m in {wanted!r} if m not in sys.modules]))\n"
    )
    stdlib = set(sys.stdlib_module_names)
    assert [m for m in missing if m.split(".")[0] not in stdlib] == []


def test_modules_for_adds_airflow_and_companions_once_and_nothing_for_an_empty_list():
    assert preload.modules_for([]) == []
    mods = preload.modules_for(["pandas", "pandas", "sklearn.tree"])
    assert mods[: len(preload.AIRFLOW_TASK_MODULES)] == list(preload.AIRFLOW_TASK_MODULES)
    assert "pyarrow.parquet" in mods and "joblib" in mods and len(mods) == len(set(mods))


def test_a_module_that_fails_to_import_is_skipped_and_named_the_rest_load():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from airflow_gitops.local import preload\n"
            "ok, _ = preload.preload(['no_such_module_xyz', 'json', 'csv:no_such_function'])\n"
            "print(ok, 'json' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.split() == ["1", "True"]
    assert "skipped no_such_module_xyz" in out.stderr and "skipped csv:no_such_function" in out.stderr


def test_the_patches_fit_the_installed_airflow():
    """They touch Airflow internals: an upgrade that moves them must fail here, not silently slow down."""
    got = _child(
        "import json\n"
        "import airflow\n"
        "from airflow_gitops.local import preload\n"
        "print(json.dumps([preload.patch_local_executor(['json']), preload.patch_scheduler_busy_sleep(0.1),"
        " preload.patch_dag_processor_poll(), preload.patch_fastapi_route_building(),"
        " preload.patch_scheduler_busy_sleep(0.1), preload.patch_fastapi_route_building()]))\n"
    )
    assert got == [True, True, True, True, False, False]  # the last two: a second patch changes nothing


# Builds Airflow's whole API server app (both its apps, as `airflow api-server` does) in a fresh process and
# prints, per route, what FastAPI validates and serialises with: the pydantic core schema behind every
# parameter, body and response field (class ids and addresses stripped: they differ between processes), and the OpenAPI
# document. With PATCH the route types are built through the memo.
_API_SCHEMAS = r"""
import json, os, re, sys
os.environ["AIRFLOW_HOME"] = sys.argv[1]
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"  # no generated password printed
patched = None
if sys.argv[2] == "PATCH":
    from airflow_gitops.local import preload
    patched = preload.patch_fastapi_route_building()
import pydantic.type_adapter
built = []
_init = pydantic.type_adapter.TypeAdapter.__init__
def _count(self, *a, **k):
    built.append(1)
    return _init(self, *a, **k)
pydantic.type_adapter.TypeAdapter.__init__ = _count
from airflow.api_fastapi.app import create_app
from fastapi.routing import APIRoute
from starlette.routing import Mount
app = create_app("all")

def fields(route):
    d = route.dependant
    out = []
    def walk(dep):
        for group in (dep.path_params, dep.query_params, dep.header_params, dep.cookie_params, dep.body_params):
            out.extend(f for f in group)
        for sub in dep.dependencies:
            walk(sub)
    walk(d)
    out += [route.body_field, route.response_field, *route.response_fields.values()]
    return [f for f in out if f is not None]

def norm(x):
    return re.sub(r" at 0x[0-9a-f]+>", ">", re.sub(r":[0-9]{6,}", "", repr(x)))

routes, docs = {}, {}
def collect(prefix, app):
    docs[prefix] = app.openapi()
    for r in app.routes:
        if isinstance(r, Mount) and hasattr(r.app, "openapi"):
            collect(prefix + r.path, r.app)
        elif isinstance(r, APIRoute):
            key = f"{prefix}{r.path} {sorted(r.methods)}"
            routes.setdefault(key, []).append([f.name + " " + norm(f._type_adapter.core_schema) for f in fields(r)])
collect("", app)
print(json.dumps({"patched": patched, "adapters": len(built), "routes": routes, "docs": docs}, default=str))
"""


def test_api_server_routes_keep_their_schemas_when_their_types_are_built_once(tmp_path):
    """The API server builds identical route types once (``patch_fastapi_route_building``): every route of
    Airflow's API server must validate and serialise exactly as it does without the patch."""
    outs = {}
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", _API_SCHEMAS, str(tmp_path / mode), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("PLAIN", "PATCH")
    }
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outs[mode] = json.loads(out.strip().splitlines()[-1])
    plain, patched = outs["PLAIN"], outs["PATCH"]
    assert patched["patched"] is True
    # Airflow's public, UI, auth and execution API routes
    assert len(plain["routes"]) > 150
    assert patched["routes"] == plain["routes"]
    assert patched["docs"] == plain["docs"]
    # It did reuse adapters: ~8,600 are built for Airflow's routes (~5,800 by FastAPI's fields directly),
    # ~2,000 with the patch.
    assert patched["adapters"] < plain["adapters"] / 4, (patched["adapters"], plain["adapters"])


def test_preload_names_are_validated_in_platform_yaml():
    assert parse_spec({}).local.preload == list(DEFAULT_PRELOAD)
    assert parse_spec({"local": {"preload": []}}).local.preload == []
    for bad in ["os; rm -rf /", "../x", "pandas.", "", "a b"]:
        with pytest.raises(SpecError, match="local.preload.*not a Python module name"):
            parse_spec({"local": {"preload": [bad]}})


LEAK_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

SEEN_BY_THIS_PROCESS = []  # a module-level global of the DAG file itself


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
     default_args={{"retries": 0}}, max_active_tasks=1)
def _d():
    @task
    def probe(_previous=None):
        import os, sys
        preloaded = {{m: m in sys.modules for m in ("pandas", "sklearn", "mlflow", "boto3")}}
        import mlflow, pandas, sklearn
        seen = {{
            "pandas attribute": getattr(pandas, "LEAK_PROBE", None),
            "sklearn config": sklearn.get_config()["assume_finite"],
            "mlflow uri": mlflow.get_tracking_uri(),
            "environment": os.environ.get("LEAK_PROBE"),
            "dag module global": list(SEEN_BY_THIS_PROCESS),
        }}
        # leave changes behind for the next task to find (it must not)
        pandas.LEAK_PROBE = os.getpid()
        sklearn.set_config(assume_finite=True)
        mlflow.set_tracking_uri("http://127.0.0.1:9/leaked")
        os.environ["LEAK_PROBE"] = "1"
        SEEN_BY_THIS_PROCESS.append(os.getpid())
        return {{"pid": os.getpid(), "preloaded": preloaded, "seen": seen}}

    previous = None
    for i in range(4):
        previous = probe.override(task_id=f"t{{i}}")(previous)

_d()
"""


@pytest.mark.platform
def test_preloaded_tasks_share_no_state_and_start_with_the_libraries(local_platform, tmp_path):
    dag_id = "t_preload_" + uuid.uuid4().hex[:6]
    repo = DagRepo(local_platform.spec.dag_repo_url, tmp_path / "work")
    repo.push({f"dags/{dag_id}.py": LEAK_DAG.format(dag_id=dag_id)}, f"add {dag_id}")
    client = local_platform.client()
    wait_for(lambda: dag_id in client.dag_ids(), 90, f"{dag_id} to be listed")
    probes = []
    for _ in range(2):
        run_id = client.trigger(dag_id)
        state = client.wait_run(dag_id, run_id, timeout=300)["state"]
        assert state == "success", client.task_log(dag_id, run_id, "t0")[-3000:]
        probes += [client.xcom(dag_id, run_id, f"t{i}") for i in range(4)]
    assert len({p["pid"] for p in probes}) == len(probes)  # each task try its own process
    uri = local_platform.layout.mlflow_url
    for p in probes:
        assert p["preloaded"] == {"pandas": True, "sklearn": True, "mlflow": True, "boto3": True}, p
        assert p["seen"] == {
            "pandas attribute": None,
            "sklearn config": False,
            "mlflow uri": uri,
            "environment": None,
            "dag module global": [],
        }, p
    # Each lever of the launch plan the platform wrote (launch_plan.py) took effect where it belongs.
    log = local_platform.supervisor.log_of("scheduler").read_text(errors="replace")
    assert "airflow-gitops: preloaded" in log and "busy-only loop sleep 0.1 s: on" in log
    log = local_platform.supervisor.log_of("dag-processor").read_text(errors="replace")
    assert "modules in" in log and "prompt parse collection: on" in log
    log = local_platform.supervisor.log_of("api-server").read_text(errors="replace")
    assert "airflow-gitops: route types built once: on" in log
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert "database ready" in local_platform.supervisor.log_of(name).read_text(errors="replace"), name


def test_doctor_names_a_preload_package_that_is_not_installed(tmp_path):
    from airflow_gitops.checks.preload import preload_checks

    spec = parse_spec({"local": {"preload": ["pandas", "no_such_package_xyz.sub"]}}, base_dir=tmp_path)
    [row] = preload_checks(spec)
    assert row.status.name == "fail" and "no_such_package_xyz" in row.saw and "pandas" not in row.saw
    assert "local.preload" in row.fix
    [row] = preload_checks(parse_spec({}, base_dir=tmp_path))
    assert row.status.name == "ok"


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.platform
def test_background_components_yield_the_cpu_to_the_ones_users_wait_on(local_platform):
    from airflow_gitops.local.components import BACKGROUND_NICE

    base = _nice(int(local_platform.supervisor.pidfile.read_text()))
    nice = {name: _nice(info["pid"]) - base for name, info in local_platform.supervisor.states().items()}
    assert nice["api-server"] == nice["scheduler"] == nice["postgres"] == nice["s3"] == 0, nice
    assert nice["dag-processor"] == nice["triggerer"] == nice["mlflow"] == BACKGROUND_NICE > 0, nice


_WAIT = r"""
import json, sys, time
from airflow_gitops.local import preload
started = time.monotonic()
note = preload.wait_for_migrations(["airflow", "triggerer"], sys.argv[1], timeout=float(sys.argv[2]))
print(json.dumps({"note": note, "took": time.monotonic() - started, "returned_at": time.time(),
                  "imported": "airflow.jobs.triggerer_job_runner" in sys.modules}))
"""


def test_components_start_before_the_migration_and_wait_for_its_stamp(airflow_db: AirflowDb, pg_server, tmp_path):
    """Airflow's components start with the database and wait until `up` has stamped the migration: not
    without a stamp, not with a stamp of another Airflow version, not when the database's schema revision
    is not the stamped one (a database replaced since); at once with a current stamp, and as soon as it
    appears when they were waiting."""
    from importlib.metadata import version

    conn = pg_server.connect(airflow_db.url.rsplit("/", 1)[1])
    with conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        (revision,) = cur.fetchone()
    conn.close()
    current = f"{version('apache-airflow-core')} {revision}\n"
    stamps = {
        "missing": None,
        "other version": f"2.11.0 {revision}\n",
        "other revision": f"{version('apache-airflow-core')} 0000aaaa1111\n",
        "garbage": "not a stamp",
        "current": current,
        "appears later": None,
    }
    procs = {}
    for case, text in stamps.items():
        stamp = tmp_path / case.replace(" ", "_")
        if text is not None:
            stamp.write_text(text)
        procs[case] = (
            stamp,
            subprocess.Popen(
                [sys.executable, "-c", _WAIT, str(stamp), "20"],
                env=airflow_db.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    time.sleep(12)  # each imports Airflow first (a few seconds on 2 cores), then waits
    assert procs["appears later"][1].poll() is None, "returned before its stamp existed"
    procs["appears later"][0].write_text(current)
    written_at = time.time()
    got = {}
    for case, (_, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        got[case] = json.loads(out.strip().splitlines()[-1])
    for case in ("missing", "other version", "other revision", "garbage"):
        assert got[case]["note"].startswith("gave up waiting for the database migration"), (case, got[case])
        assert got[case]["took"] >= 20
    for case in ("current", "appears later"):
        assert "database ready" in got[case]["note"], (case, got[case])
        assert got[case]["imported"]  # the command's modules were imported before the wait
    assert got["current"]["took"] < 20
    assert written_at <= got["appears later"]["returned_at"] < written_at + 5
