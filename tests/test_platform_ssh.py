"""The local platform pulling DAGs over SSH (real sshd on 127.0.0.1, deploy key, pinned known_hosts)."""

from __future__ import annotations

import os

import pytest
from conftest import DagRepo, cleanup_platform, make_spec, quiet_console, tiny_dag, wait_for
from sshd import write_ed25519

from airflow_gitops.dag_repo import DAG_IDS
from airflow_gitops.errors import PlatformError
from airflow_gitops.local.dag_repo import template_files
from airflow_gitops.local.platform import LocalTarget

pytestmark = pytest.mark.platform  # starts a real local platform


@pytest.fixture(scope="module")
def ssh_repo(sshd_git):
    return sshd_git.new_repo("platform-dags", template_files())


def test_platform_syncs_and_runs_dags_over_ssh(sshd_git, ssh_repo, tmp_path):
    spec = make_spec(
        tmp_path,
        {
            "dags": {
                "repo": ssh_repo,
                "ssh_key_file": str(sshd_git.key_path),
                "known_hosts_file": str(sshd_git.known_hosts_path),
            }
        },
    )
    platform = LocalTarget(spec)
    try:
        platform.up(quiet_console())
        client = platform.client()
        wait_for(lambda: set(DAG_IDS) <= client.dag_ids(), 90, "the template DAGs over SSH")
        # A user pushes over SSH with the same deploy key; the commit goes live and runs.
        env = {**os.environ, "GIT_SSH_COMMAND": sshd_git.git_ssh_command()}
        repo = DagRepo(ssh_repo, tmp_path / "work", env=env)
        sha = repo.push({"dags/ssh_pushed.py": tiny_dag("ssh_pushed")}, "add ssh_pushed")
        wait_for(lambda: "ssh_pushed" in client.dag_ids(), 90, "ssh_pushed to be listed")
        run = client.wait_run("ssh_pushed", client.trigger("ssh_pushed"), timeout=180)
        assert run["state"] == "success" and run["bundle_version"] == sha
        assert platform.status().branch_head == sha
    finally:
        cleanup_platform(platform)


def test_wrong_host_key_fails_before_anything_starts(sshd_git, ssh_repo, tmp_path):
    # A known_hosts that pins a different key for the same host:port (what a MITM would present).
    other = tmp_path / "other_host_key"
    fake_pub = write_ed25519(other, "not-the-server")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_git.port} {fake_pub}\n")
    spec = make_spec(
        tmp_path,
        {"dags": {"repo": ssh_repo, "ssh_key_file": str(sshd_git.key_path), "known_hosts_file": str(known_hosts)}},
    )
    platform = LocalTarget(spec)
    with pytest.raises(PlatformError) as err:
        platform.up(quiet_console())
    message = err.value.render()
    assert "host key" in message and "ssh-keyscan" in message and "fingerprint" in message
    assert not platform.supervisor.running()
    assert not spec.state_dir.exists(), "nothing may be created when preflight fails"
