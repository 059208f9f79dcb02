"""``airflow-gitops check PATH``: real DAG files parsed in real child processes, a real pytest run.

One broken repository holds every kind of problem and is checked once per output format (module
fixtures): each Airflow start costs seconds on a busy machine. The good repository is the template.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from airflow_gitops import cli
from airflow_gitops.dag_repo import DAG_IDS, template_dir

GOOD = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def make():
    @task
    def say():
        return "hi"
    say()

make()
"""
SLOW = "from datetime import datetime\nimport slowmod\n" + GOOD.split("\n", 2)[2]
CYCLE = """from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("cyclic_dag", schedule=None, start_date=datetime(2026, 1, 1)):
    a = EmptyOperator(task_id="a")
    b = EmptyOperator(task_id="b")
    a >> b >> a
"""
PROVIDER = """from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.snowflake.operators.snowflake import SQLExecuteQueryOperator

with DAG("snow", schedule=None, start_date=datetime(2026, 1, 1)):
    SQLExecuteQueryOperator(task_id="q", sql="select 1")
"""
BROKEN = {
    "dags/good.py": GOOD.format(dag_id="good_dag"),
    "dags/syntax.py": "from airflow.sdk import dag\n\n\ndef broken(:\n    pass\n",  # line 4
    "dags/missing.py": "from airflow.sdk import dag\nimport package_that_does_not_exist  # line 2\n",
    "dags/cycle.py": CYCLE,
    "dags/slow.py": SLOW.format(dag_id="slow_dag"),
    "dags/slowmod.py": "import time\n\ntime.sleep(1.5)\n",  # a local helper: no 'dag' in it, never parsed itself
    "dags/snow.py": PROVIDER,
    "dags/dup.py": GOOD.format(dag_id="good_dag"),
    "tests/test_things.py": "def test_passes():\n    assert True\n\n\ndef test_breaks():\n    assert 1 == 2, 'boom'\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _check(*args: str, cwd: Path, monkeypatch) -> tuple[int, str]:
    """Exit code and stdout (with --json: only the JSON document), or stdout + stderr without it."""
    monkeypatch.chdir(cwd)  # no platform.yaml here: built-in defaults, dags.sub_path "dags"
    monkeypatch.setattr(cli.console, "width", 400)  # one table row per line, as in a wide terminal
    result = CliRunner().invoke(cli.app, ["check", *args])
    assert isinstance(result.exception, SystemExit | None), result.exception  # the CLI's own exit, no crash
    return result.exit_code, result.stdout if "--json" in args else result.output


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("broken") / "repo", BROKEN)


@pytest.fixture(scope="module")
def broken_json(broken_repo, tmp_path_factory) -> tuple[int, dict]:
    with pytest.MonkeyPatch.context() as mp:
        code, out = _check(str(broken_repo), "--json", cwd=tmp_path_factory.mktemp("cwd"), monkeypatch=mp)
    return code, json.loads(out)


def _file(report: dict, name: str) -> dict:
    (row,) = [f for f in report["files"] if f["file"] == f"dags/{name}"]
    return row


def test_template_repository_passes_and_lists_both_dags(tmp_path, monkeypatch):
    repo = tmp_path / "dag-repo"
    shutil.copytree(template_dir(), repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    code, out = _check(str(repo), "--json", cwd=tmp_path, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert code == 0, out
    assert report["ok"] is True and report["dags"] == sorted(DAG_IDS)
    assert {f["file"]: f["status"] for f in report["files"]} == {
        "dags/ml_training_pipeline.py": "ok",
        "dags/platform_selfcheck.py": "ok",
    }
    assert report["tests"]["status"] == "ok" and report["tests"]["passed"] > 0, report["tests"]
    # read-only: nothing written into the working tree
    assert not [p for p in repo.rglob("*") if p.name in ("__pycache__", ".pytest_cache")]


def test_json_output_shape(broken_json):
    code, report = broken_json
    assert code == 1 and report["ok"] is False
    assert {
        "ok",
        "path",
        "dags_folder",
        "python",
        "airflow_version",
        "import_timeout",
        "thresholds",
        "counts",
        "dags",
        "files",
        "tests",
        "parse_seconds",
        "seconds",
    } <= set(report)
    assert report["dags_folder"] == "dags" and report["import_timeout"] == 30
    assert report["airflow_version"].startswith("3.")
    assert report["thresholds"] == {"fail_parse_seconds": 30, "warn_parse_seconds": 7.5, "slow_import_seconds": 0.5}
    for row in report["files"]:
        assert {"file", "status", "dags", "parse_seconds", "problems", "fixes", "slow_imports"} <= set(row)
        assert row["status"] in ("ok", "warn", "fail") and isinstance(row["parse_seconds"], float)
    assert {"status", "summary", "command", "seconds", "passed", "failed", "fix"} <= set(report["tests"])
    # helpers without 'dag' in them are not DAG files (Airflow's safe mode), so slowmod.py is no row
    assert sorted(f["file"] for f in report["files"]) == sorted(
        f"dags/{n}" for n in ("cycle.py", "dup.py", "good.py", "missing.py", "slow.py", "snow.py", "syntax.py")
    )


def test_syntax_and_import_errors_name_file_line_and_module(broken_json):
    _, report = broken_json
    syntax = _file(report, "syntax.py")
    assert syntax["status"] == "fail" and syntax["problems"][0].startswith("dags/syntax.py:4: SyntaxError")
    missing = _file(report, "missing.py")
    assert missing["status"] == "fail"
    assert missing["problems"][0].startswith("dags/missing.py:2: ModuleNotFoundError")
    assert "package_that_does_not_exist" in missing["problems"][0]
    assert missing["missing_package"] == "package_that_does_not_exist"
    assert "requirements.txt" in missing["fixes"][0] and "image.extra_requirements" in missing["fixes"][0]


def test_cycle_names_the_dag(broken_json):
    _, report = broken_json
    row = _file(report, "cycle.py")
    assert row["status"] == "fail" and row["dags"] == []
    assert "Cycle detected" in row["problems"][0] and "cyclic_dag" in row["problems"][0]


def test_slow_top_level_import_is_named(broken_json):
    _, report = broken_json
    row = _file(report, "slow.py")
    assert row["status"] == "warn" and row["dags"] == ["slow_dag"]
    assert [i["module"] for i in row["slow_imports"]] == ["slowmod"]
    assert row["slow_imports"][0]["seconds"] >= 1.4 and row["parse_seconds"] >= 1.4
    assert "slowmod" in row["problems"][0] and "inside the task" in row["fixes"][0]


def test_missing_provider_names_the_package_and_the_fix(broken_json):
    _, report = broken_json
    row = _file(report, "snow.py")
    assert row["status"] == "fail"
    assert row["problems"][0].startswith("dags/snow.py:3: ModuleNotFoundError")
    assert row["missing_package"] == "apache-airflow-providers-snowflake"
    assert "apache-airflow-providers-snowflake" in row["fixes"][0]
    assert "image.extra_requirements" in row["fixes"][0] and "requirements.txt" in row["fixes"][0]


def test_duplicate_dag_id_fails_both_files(broken_json):
    _, report = broken_json
    for name, other in (("good.py", "dags/dup.py"), ("dup.py", "dags/good.py")):
        row = _file(report, name)
        assert row["status"] == "fail" and f"dag_id 'good_dag' is also defined in {other}" in row["problems"]


def test_repository_tests_run_and_the_failing_one_is_named(broken_json):
    _, report = broken_json
    tests = report["tests"]
    assert tests["status"] == "fail" and tests["passed"] == 1
    assert [f["test"] for f in tests["failed"]] == ["tests/test_things.py::test_breaks"]
    assert "boom" in tests["failed"][0]["message"] and "test_breaks" in tests["summary"]


def test_table_output_and_exit_code(broken_repo, tmp_path, monkeypatch):
    code, out = _check(str(broken_repo), "--no-tests", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1, out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│ dags/")}
    assert "dags/syntax.py:4: SyntaxError" in rows["dags/syntax.py"] and "fail" in rows["dags/syntax.py"]
    assert "slowmod" in rows["dags/slow.py"] and "warn" in rows["dags/slow.py"]
    assert "apache-airflow-providers-snowflake" in out
    assert "skipped (--no-tests)" in out
    assert "6 failed: dags/cycle.py, dags/dup.py, dags/good.py, dags/missing.py, dags/snow.py, dags/syntax.py" in out


def test_platform_yaml_gives_the_dag_folder_and_the_import_timeout(tmp_path, monkeypatch):
    """-f platform.yaml: dags.sub_path is the folder, airflow.config's dagbag_import_timeout the limit."""
    spec = "dags:\n  sub_path: pipelines\nairflow:\n  config:\n    core:\n      dagbag_import_timeout: 2\n"
    dag = GOOD.format(dag_id="slowish").replace(
        "from datetime import datetime", "import time\ntime.sleep(0.8)\n" + "from datetime import datetime"
    )
    repo = _write(
        tmp_path / "repo",
        {
            "platform.yaml": spec,
            "pipelines/sleepy.py": "import time\nfrom airflow.sdk import dag\ntime.sleep(5)  # line 3\n",
            "pipelines/slowish.py": dag,
        },
    )
    code, out = _check(str(repo), "-f", str(repo / "platform.yaml"), "--json", cwd=tmp_path, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert code == 1 and report["dags_folder"] == "pipelines" and report["import_timeout"] == 2
    sleepy, slowish = report["files"]
    assert sleepy["file"] == "pipelines/sleepy.py" and sleepy["status"] == "fail"
    assert sleepy["problems"] == [
        "pipelines/sleepy.py:3: still importing when [core] dagbag_import_timeout (2 s) ran out; "
        "Airflow stopped it here"
    ]
    assert 2 <= sleepy["parse_seconds"] < 5
    assert slowish["status"] == "warn" and slowish["dags"] == ["slowish"], slowish
    assert (
        slowish["problems"][0].startswith("parsed in ")
        and "over 25% of [core] dagbag_import_timeout" in slowish["problems"][0]
    )


def test_path_that_does_not_exist_is_one_clean_message(tmp_path, monkeypatch):
    code, out = _check(str(tmp_path / "nowhere"), cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1
    assert "Traceback" not in out and "nowhere does not exist" in out
    assert len(out.strip().splitlines()) <= 3, out


def test_missing_dag_folder_names_folders_with_python(tmp_path, monkeypatch):
    repo = _write(tmp_path / "repo", {"pipelines/a.py": "x = 1\n"})
    code, out = _check(str(repo), cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1 and "Traceback" not in out
    assert "no DAG folder 'dags'" in out and "pipelines" in out and "--dags-folder" in out
    code, out = _check(str(repo), "--dags-folder", "flows", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1 and "no DAG folder 'flows'" in out and "(--dags-folder)" in out


def _locked() -> dict[str, str]:
    lock = tomllib.loads((Path(__file__).resolve().parent.parent / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"]}


def test_ci_workflow_pins_the_platforms_versions_and_runs_check():
    workflow = yaml.safe_load((template_dir() / ".github" / "workflows" / "dag-ci.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert "-r requirements.txt" in runs and "pytest" in runs and '"airflow-gitops @ git+https://' in runs
    assert "airflow-gitops check --json" in runs
    pins = dict(re.findall(r'"([a-z0-9-]+)==([^"]+)"', runs))
    locked = _locked()
    assert pins["apache-airflow"] == locked["apache-airflow"]
    assert {name: locked.get(name) for name in pins} == pins  # every pin is the lock's version
    readme = (template_dir() / "README.md").read_text()
    assert f'"apache-airflow=={locked["apache-airflow"]}"' in readme
    assert "git config core.hooksPath hooks" in readme and "YOUR-ORG" in readme


def test_pre_push_hook_blocks_a_push_with_a_broken_dag(tmp_path):
    """The hook as git runs it: core.hooksPath=hooks, `git push` to a bare repository is refused."""
    repo = tmp_path / "dag-repo"
    shutil.copytree(template_dir(), repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    assert os.access(repo / "hooks" / "pre-push", os.X_OK)
    (repo / "dags" / "broken.py").write_text("from airflow.sdk import dag\nimport package_that_does_not_exist\n")
    bare = tmp_path / "remote.git"
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # airflow-gitops of this venv
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "AIRFLOW_GITOPS_CHECK_ARGS": "--no-tests",
        "COLUMNS": "200",  # rich wraps at 80 columns when not on a terminal
    }
    for args in (
        ["init", "-q", "--bare", str(bare)],
        ["-C", str(repo), "init", "-q", "-b", "main"],
        ["-C", str(repo), "config", "core.hooksPath", "hooks"],
        ["-C", str(repo), "add", "-A"],
        ["-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dags"],
    ):
        subprocess.run(["git", *args], env=env, check=True, capture_output=True)
    push = subprocess.run(
        ["git", "-C", str(repo), "push", str(bare), "main"], env=env, capture_output=True, text=True, timeout=300
    )
    out = push.stdout + push.stderr
    assert push.returncode != 0, out
    assert "dags/broken.py:2" in out and "package_that_does_not_exist" in out and "failed to push" in out
    refs = subprocess.run(["git", "-C", str(bare), "show-ref"], capture_output=True, text=True)
    assert refs.stdout == ""  # nothing reached the remote
