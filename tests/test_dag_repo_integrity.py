"""The template's own CI test (tests/test_dag_integrity.py) passes on the template and catches broken DAGs.

Each case copies the template to a temporary folder, optionally plants a bad DAG file, and runs the
template's pytest in a subprocess, exactly as a team's CI would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from airflow_gitops.dag_repo import DAG_IDS, DAGS_SUBDIR, template_dir


def _copy_template(tmp_path: Path) -> Path:
    repo = tmp_path / "dag-repo"
    shutil.copytree(template_dir(), repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return repo


def _run_integrity(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_template_layout():
    root = template_dir()
    assert (root / DAGS_SUBDIR / "ml_training_pipeline.py").is_file()
    assert (root / DAGS_SUBDIR / "platform_selfcheck.py").is_file()
    assert (root / "tests" / "test_dag_integrity.py").is_file()
    assert (root / "README.md").is_file()
    assert set(DAG_IDS) == {"ml_training_pipeline", "platform_selfcheck"}


def test_requirements_match_the_lock_file():
    """requirements.txt pins exactly the versions uv.lock resolves (the image installs the same)."""
    import tomllib

    lock = tomllib.loads((Path(__file__).resolve().parent.parent / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    lines = [ln.strip() for ln in (template_dir() / "requirements.txt").read_text().splitlines()]
    pins = dict(ln.split("==", 1) for ln in lines if ln and not ln.startswith("#"))
    assert set(pins) == {"mlflow", "pandas", "pyarrow", "scikit-learn", "boto3"}
    assert pins == {name: locked[name] for name in pins}


def test_integrity_passes_on_the_template(tmp_path):
    proc = _run_integrity(_copy_template(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


BROKEN = {
    "import_error": (
        "from airflow.sdk import dag\nimport module_that_does_not_exist\n\n@dag(dag_id='broken')\ndef broken():\n"
        "    pass\n\nbroken()\n",
        ["test_no_import_errors", "import_error.py", "module_that_does_not_exist"],
    ),
    "no_owner_tags_retries": (
        "from datetime import datetime\nfrom airflow.sdk import dag, task\n\n"
        "@dag(dag_id='sloppy', schedule=None, start_date=datetime(2025, 1, 1))\ndef sloppy():\n"
        "    @task\n    def hello():\n        return 1\n    hello()\n\nsloppy()\n",
        ["test_every_dag_has_an_owner", "test_every_dag_has_tags", "test_every_dag_sets_retries", "sloppy"],
    ),
    "heavy_top_level_import": (
        "from datetime import datetime\nimport pandas\nfrom airflow.sdk import dag, task\n\n"
        "@dag(dag_id='heavy', schedule=None, start_date=datetime(2025, 1, 1), tags=['x'],\n"
        "     default_args={'owner': 'team', 'retries': 1})\ndef heavy():\n"
        "    @task\n    def hello():\n        return 1\n    hello()\n\nheavy()\n",
        ["test_no_heavy_imports_at_module_level[heavy_top_level_import.py]", "imports pandas"],
    ),
    "slow_import": (
        "import time\nfrom datetime import datetime\nfrom airflow.sdk import dag, task\ntime.sleep(4)\n\n"
        "@dag(dag_id='slow', schedule=None, start_date=datetime(2025, 1, 1), tags=['x'],\n"
        "     default_args={'owner': 'team', 'retries': 1})\ndef slow():\n"
        "    @task\n    def hello():\n        return 1\n    hello()\n\nslow()\n",
        ["test_import_time_budget[slow_import.py]", "slow_import.py took"],
    ),
}


def test_integrity_fails_on_planted_broken_dags(tmp_path):
    """One copy of the template with every kind of broken DAG planted; each must be reported by name."""
    repo = _copy_template(tmp_path)
    for case, (source, _) in BROKEN.items():
        (repo / DAGS_SUBDIR / f"{case}.py").write_text(source)
    proc = _run_integrity(repo, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"integrity test did not fail on the planted DAGs:\n{out[-4000:]}"
    missing = {case: [t for t in expected if t not in out] for case, (_, expected) in BROKEN.items()}
    missing = {case: texts for case, texts in missing.items() if texts}
    assert not missing, f"not reported: {missing}\n{out[-6000:]}"
    # the template's own DAGs still pass their checks
    for dag_file in ("ml_training_pipeline.py", "platform_selfcheck.py"):
        assert f"[{dag_file}] FAILED" not in out and f"[{dag_file}]" not in out.split("short test summary")[-1]
