"""DAG integrity: run in this repository's CI before a push reaches Airflow.

    pip install apache-airflow -r requirements.txt pytest && pytest tests/

Checks every DAG file under dags/: it imports without errors and within the time budget, imports no
heavy library at module level, and every DAG has an owner, tags, explicit retries and no cycles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DAGS_DIR

# Seconds one DAG file may take to import (Airflow's own hard limit is core.dagbag_import_timeout, 30 s).
IMPORT_BUDGET_SECONDS = float(os.environ.get("DAG_IMPORT_BUDGET_SECONDS", "3"))
# Import these inside tasks, never at the top of a DAG file: the DAG processor re-parses files constantly.
HEAVY_MODULES = ("pandas", "sklearn", "mlflow", "boto3", "pyarrow", "torch", "tensorflow")


def _ignored(path: Path) -> bool:
    patterns = []
    ignore = DAGS_DIR / ".airflowignore"
    if ignore.exists():
        patterns = [
            ln.strip().rstrip("/") for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
    rel = path.relative_to(DAGS_DIR).as_posix()
    return any(rel == p or rel.startswith(p + "/") for p in patterns)


DAG_FILES = sorted(p for p in DAGS_DIR.rglob("*.py") if not _ignored(p) and "__pycache__" not in p.parts)


def _dagbag_class():
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.1
    except ImportError:  # pragma: no cover - Airflow 3.0
        from airflow.models.dagbag import DagBag
    return DagBag


@pytest.fixture(scope="session")
def dagbag():
    import airflow.sdk  # noqa: F401  - pay Airflow's own import cost before timing DAG files

    return _dagbag_class()(dag_folder=str(DAGS_DIR))


def test_there_are_dag_files():
    assert DAG_FILES, f"no DAG files under {DAGS_DIR}"


def test_no_import_errors(dagbag):
    errors = "\n\n".join(f"{path}:\n{err}" for path, err in dagbag.import_errors.items())
    assert not dagbag.import_errors, f"DAG import errors:\n{errors}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.relative_to(DAGS_DIR).as_posix())
def test_file_defines_a_dag(dagbag, path):
    defined = [dag_id for dag_id, dag in dagbag.dags.items() if Path(dag.fileloc).resolve() == path.resolve()]
    assert defined or any(Path(k).name == path.name for k in dagbag.import_errors), (
        f"{path.name} defines no DAG: put helpers in a package listed in dags/.airflowignore"
    )


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.relative_to(DAGS_DIR).as_posix())
def test_import_time_budget(dagbag, path):
    stats = {Path(s.file).name: s for s in dagbag.dagbag_stats}
    stat = stats.get(path.name)
    assert stat is not None, f"{path.name} was not parsed (Airflow skips files without 'airflow' and 'dag' in them)"
    seconds = stat.duration.total_seconds() if hasattr(stat.duration, "total_seconds") else float(stat.duration)
    assert seconds <= IMPORT_BUDGET_SECONDS, (
        f"{path.name} took {seconds:.2f}s to import (budget {IMPORT_BUDGET_SECONDS}s): move heavy work into tasks"
    )


# Imports airflow.sdk once, then imports each DAG file in a forked child (a fresh interpreter per file where
# fork is unavailable) and reports which heavy modules that import added.
_PROBE = """
import json, os, runpy, sys
sys.path.insert(0, sys.argv[1])
import airflow.sdk

def probe(path):
    before = set(sys.modules)
    runpy.run_path(path)
    return sorted({m.split(".")[0] for m in set(sys.modules) - before} & set(json.loads(sys.argv[2])))

result = {}
for path in sys.argv[3:]:
    if not hasattr(os, "fork"):
        result[path] = probe(path)
        break
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            payload = json.dumps(probe(path))
        except BaseException:
            payload = "null"
        os.write(write, payload.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result[path] = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
print(json.dumps(result))
"""


@pytest.fixture(scope="session")
def module_level_imports() -> dict[str, list[str] | None]:
    """For each DAG file: the heavy modules importing it pulls in (None: it does not import on its own)."""
    found: dict[str, list[str] | None] = {}
    todo = [str(p) for p in DAG_FILES]
    while todo:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(DAGS_DIR), json.dumps(HEAVY_MODULES), *todo],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"import probe failed:\n{proc.stderr[-3000:]}")
        found.update({Path(k).name: v for k, v in json.loads(lines[-1]).items()})
        todo = [p for p in todo if Path(p).name not in found]
    return found


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.relative_to(DAGS_DIR).as_posix())
def test_no_heavy_imports_at_module_level(module_level_imports, path):
    heavy = module_level_imports[path.name]
    if heavy is None:
        pytest.skip(f"{path.name} does not import on its own: test_no_import_errors reports why")
    assert not heavy, f"{path.name} imports {', '.join(heavy)} at module level: import them inside the task functions"


def _dags(dagbag):
    assert dagbag.dags, "no DAGs loaded"
    return sorted(dagbag.dags.items())


def test_every_dag_has_an_owner(dagbag):
    bad = [dag_id for dag_id, dag in _dags(dagbag) if not dag.owner or dag.owner.lower() == "airflow"]
    assert not bad, f"DAGs without an owner (set default_args={{'owner': ...}}): {bad}"


def test_every_dag_has_tags(dagbag):
    bad = [dag_id for dag_id, dag in _dags(dagbag) if not dag.tags]
    assert not bad, f"DAGs without tags: {bad}"


def test_every_dag_sets_retries(dagbag):
    bad = [
        dag_id
        for dag_id, dag in _dags(dagbag)
        if "retries" not in (dag.default_args or {}) or not isinstance(dag.default_args["retries"], int)
    ]
    assert not bad, f"DAGs without an explicit integer default_args['retries'] (0 is allowed, but say so): {bad}"


def test_no_cycles(dagbag):
    for dag_id, dag in _dags(dagbag):
        try:
            dag.check_cycle()
        except Exception as exc:
            pytest.fail(f"{dag_id} has a cycle: {exc}")
