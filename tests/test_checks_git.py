"""Git checks against a real sshd serving a bare repository with a deploy key (tests/sshd.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sshd import write_ed25519

from airflow_gitops.checks import git
from airflow_gitops.spec import parse_spec

GOOD_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def hello():
    @task
    def say():
        return "hi"
    say()

hello()
"""
BROKEN_DAG = "from airflow.sdk import dag\n\nimport package_that_does_not_exist  # line 3\n"


@pytest.fixture(scope="module")
def repo(sshd_git):
    return sshd_git.new_repo("dags", {"dags/hello.py": GOOD_DAG, "README.md": "x\n", "pipelines/other.py": "x = 1\n"})


def _spec(server, url, tmp_path, **dags):
    return parse_spec(
        {
            "dags": {
                "repo": url,
                "ssh_key_file": str(server.key_path),
                "known_hosts_file": str(server.known_hosts_path),
                **dags,
            }
        },
        base_dir=tmp_path,
    )


def _rows(results):
    return {r.name: r for r in results}


def test_reachable_branch_subpath_and_imports_pass(sshd_git, repo, tmp_path):
    rows = _rows(git.git_checks(_spec(sshd_git, repo, tmp_path)))
    assert [r.status for r in rows.values()] == ["ok"] * 4, rows
    assert "hello" in rows["git.dag_imports"].saw


def test_wrong_sub_path_names_existing_directories(sshd_git, repo, tmp_path):
    rows = _rows(git.git_checks(_spec(sshd_git, repo, tmp_path, sub_path="dag")))
    r = rows["git.sub_path"]
    assert r.status == "fail"
    assert "'dag' does not exist" in r.saw and "dags, pipelines" in r.saw
    assert "set dags.sub_path" in r.fix and "'dags'" in r.fix


def test_missing_branch_lists_branches(sshd_git, repo, tmp_path):
    rows = _rows(git.git_checks(_spec(sshd_git, repo, tmp_path, branch="production")))
    assert rows["git.branch"].status == "fail"
    assert "branches: main" in rows["git.branch"].saw and "set dags.branch" in rows["git.branch"].fix


def test_unknown_host_key_fails_with_repin_fix(sshd_git, repo, tmp_path):
    other = write_ed25519(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd_git.port} {other}\n")  # pinned key is not the server's
    spec = parse_spec(
        {"dags": {"repo": repo, "ssh_key_file": str(sshd_git.key_path), "known_hosts_file": str(kh)}},
        base_dir=tmp_path,
    )
    rows = _rows(git.git_checks(spec))
    r = rows["git.reachable"]
    assert r.status == "fail" and "host key" in r.saw
    assert "ssh-keyscan" in r.fix and "fingerprint" in r.fix


def test_unregistered_deploy_key_is_rejected(sshd_git, repo, tmp_path):
    key = tmp_path / "not_a_deploy_key"
    write_ed25519(key)
    spec = parse_spec(
        {"dags": {"repo": repo, "ssh_key_file": str(key), "known_hosts_file": str(sshd_git.known_hosts_path)}},
        base_dir=tmp_path,
    )
    r = _rows(git.git_checks(spec))["git.reachable"]
    assert r.status == "fail" and "rejected the deploy key" in r.saw
    assert "deploy key" in r.fix and "read access is enough" in r.fix


def test_import_error_names_file_and_line(sshd_git, tmp_path):
    url = sshd_git.new_repo("broken", {"dags/hello.py": GOOD_DAG, "dags/broken.py": BROKEN_DAG})
    r = _rows(git.git_checks(_spec(sshd_git, url, tmp_path)))["git.dag_imports"]
    assert r.status == "fail"
    assert "dags/broken.py:3" in r.saw and "package_that_does_not_exist" in r.saw
    assert "image.extra_requirements" in r.fix


def test_default_local_repo_not_created_yet_is_skipped(tmp_path):
    spec = parse_spec({"local": {"state_dir": str(tmp_path / "state")}}, base_dir=tmp_path)
    (r,) = git.git_checks(spec)
    assert r.status == "skip" and "will be created by `up`" in r.saw


def test_default_local_repo_is_checked_when_present(sshd_git, tmp_path, monkeypatch):
    # DAG parsing is covered above; here only the bare-path repository matters (saves a 10 s DagBag).
    monkeypatch.setattr(git, "check_dag_imports", lambda spec, clone: git.ok("git.dag_imports", "not parsed here"))
    spec = parse_spec({"local": {"state_dir": str(tmp_path / "state")}}, base_dir=tmp_path)
    url = sshd_git.new_repo("local-default", {"dags/hello.py": GOOD_DAG})
    bare = Path(url.split(str(sshd_git.port), 1)[1])
    spec.local_repo.parent.mkdir(parents=True)
    bare.rename(spec.local_repo)
    rows = _rows(git.git_checks(spec))
    assert [r.status for r in rows.values()] == ["ok"] * 4, rows


ENV_PROBE_DAG = """
import json, os
from datetime import datetime
from airflow.sdk import dag, task

with open(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "seen-env.json"), "w") as fh:
    json.dump(dict(os.environ), fh)

@dag(dag_id="env_probe", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def env_probe():
    @task
    def noop():
        return 1
    noop()

env_probe()
"""


def test_dag_files_are_imported_without_the_operators_environment(tmp_path, monkeypatch):
    """doctor imports DAG files on the operator's machine: they must not see its credentials."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "admin.kubeconfig"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret-" + "x" * 20)
    monkeypatch.setenv("GITHUB_TOKEN", "operator-token")
    clone = tmp_path / "clone" / "repo"
    (clone / "dags").mkdir(parents=True)
    (clone / "dags" / "env_probe.py").write_text(ENV_PROBE_DAG)
    spec = parse_spec({"local": {"state_dir": str(tmp_path / "state")}}, base_dir=tmp_path)
    r = git.check_dag_imports(spec, clone)
    assert r.status == "ok", r
    seen = json.loads((tmp_path / "clone" / "seen-env.json").read_text())
    assert not {"KUBECONFIG", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"} & set(seen), sorted(seen)
    assert seen["HOME"] != os.environ["HOME"] and seen["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert set(seen) - {"PATH", "HOME", "TMPDIR", "LANG"} <= {
        k for k in seen if k.startswith(("AIRFLOW", "AWS_", "MLFLOW_", "MLOPS_", "PYTHON", "LC_", "_"))
    }
