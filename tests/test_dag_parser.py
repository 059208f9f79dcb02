"""The DAG parser's shared imports (issue 21): real Airflow, real forks, real packages on a real path.

The parent imports a file's installed packages once; each file that executes such an import is still
charged its seconds, and a package that kills or hangs the parent costs only time, never the other
files. The packages live in a folder outside the repository that the parser's Python finds through
``PYTHONPATH`` (added to the parser's own environment, as an installed package would be found).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_gitops.checks import git
from airflow_gitops.spec import parse_spec

DAG = """from datetime import datetime
{imports}
from airflow.sdk import DAG

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1)):
    pass
"""
# each import appends a line to a file next to it: how many processes imported it
SLOWPKG = """import os, time
with open(os.path.join(os.path.dirname(__file__), "imported-by"), "a") as f:
    f.write(str(os.getpid()) + "\\n")
time.sleep(1.0)
"""
PACKAGES = {
    "slowpkg/__init__.py": SLOWPKG,
    "killer/__init__.py": "import os\nos._exit(3)\n",
    "hangs/__init__.py": "import time\ntime.sleep(600)\n",
}


@pytest.fixture
def parse(tmp_path, monkeypatch):
    site = tmp_path / "site"
    for rel, text in PACKAGES.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    real_env = git.parse_env
    monkeypatch.setattr(git, "parse_env", lambda *a: {**real_env(*a), "PYTHONPATH": str(site)})

    def run(files: dict[str, str], timeout: float = 30) -> tuple[dict, dict]:
        root = tmp_path / "repo"
        for name, imports in files.items():
            (root / "dags" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "dags" / name).write_text(DAG.format(imports=imports, dag_id=name.removesuffix(".py")))
        spec = parse_spec(
            {
                "local": {"state_dir": str(tmp_path / "state")},
                "airflow": {"config": {"core": {"dagbag_import_timeout": timeout}}},
            },
            base_dir=tmp_path,
        )
        result = git.parse_dag_files(spec, root, root / "dags", timeout=300)
        return result, {Path(f["file"]).name: f for f in result["files"]}

    run.site = site
    return run


def test_a_shared_package_is_imported_once_and_charged_to_every_file_that_imports_it(parse):
    result, files = parse(
        {
            "a.py": "import slowpkg",
            "b.py": "try:\n    import slowpkg\nexcept ImportError:\n    pass",  # a module-level try runs too
            "c.py": "",
            # changes its import path: might mean a `slowpkg` of its own, so it imports it itself
            "d.py": "import sys\nsys.path.insert(0, '/nonexistent')\nimport slowpkg",
        }
    )
    assert result["shared_imports"] is True
    # the parent once (for a.py and b.py), d.py's child once
    assert len((parse.site / "slowpkg" / "imported-by").read_text().split()) == 2
    for name in ("a.py", "b.py", "d.py"):
        f = files[name]
        assert f["error"] is None and f["dags"] == [name.removesuffix(".py")]
        assert [m for m, _ in f["slow_imports"]] == ["slowpkg"], f
        assert f["slow_imports"][0][1] >= 0.9 and f["seconds"] >= 0.9, f
    assert files["c.py"]["slow_imports"] == [] and files["c.py"]["seconds"] < 0.9


def test_a_package_that_kills_the_parent_fails_only_its_file(parse):
    result, files = parse({"good.py": "", "bad.py": "import killer"})
    assert result["shared_imports"] is False  # the shared run died; the rerun imports in each child
    assert files["good.py"]["error"] is None and files["good.py"]["dags"] == ["good"]
    assert "the parsing process died" in files["bad.py"]["error"]


def test_a_package_that_hangs_is_stopped_by_the_import_timeout_in_the_parent_and_the_child(parse):
    result, files = parse({"good.py": "", "slow.py": "import hangs"}, timeout=3)
    assert result["shared_imports"] is True
    assert files["good.py"]["error"] is None
    assert "DagBag import timeout" in files["slow.py"]["error"], files["slow.py"]


def test_the_import_ledger_guard_knows_this_python_and_refuses_another_find_and_load():
    """The one interpreter internal the ledger wraps: present here; a changed one turns sharing off."""
    import types

    from airflow_gitops.checks import dag_parser

    assert dag_parser.ledger_problem() is None
    changed = types.SimpleNamespace(_find_and_load=lambda name: None, _resolve_name=lambda *a: "")
    assert "_find_and_load is not (name, import_)" in dag_parser.ledger_problem(changed)
    assert "is not" in dag_parser.ledger_problem(types.SimpleNamespace())
