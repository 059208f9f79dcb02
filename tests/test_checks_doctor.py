"""`airflow-gitops doctor` through the CLI: table/JSON, exit code 1 on any failure, no secret printed."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from airflow_gitops.checks.result import CheckResult, Status, exit_code
from airflow_gitops.cli import app

runner = CliRunner()


def _write(tmp_path, data) -> str:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_doctor_fresh_defaults_exit_0(tmp_path):
    result = runner.invoke(app, ["doctor", "--json", "-f", _write(tmp_path, {})])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["ok"] is True
    assert {r["name"] for r in report["checks"]} >= {"spec.valid", "git.reachable", "fernet.key", "aws.credentials"}


def test_doctor_fails_with_exit_1_and_names_fix(sshd_git, tmp_path):
    url = sshd_git.new_repo("doctor", {"pipelines/x.py": "x = 1\n"})
    key = tmp_path / "deploy_key"
    key.write_bytes(sshd_git.key_path.read_bytes())
    key.chmod(0o644)  # the seed's "SSH key permission" problem
    creds = tmp_path / "credentials"
    creds.write_text("aws_access_key_id = AKIA\n")  # no [profile] header
    spec_file = _write(
        tmp_path,
        {
            "dags": {"repo": url, "ssh_key_file": str(key), "known_hosts_file": str(sshd_git.known_hosts_path)},
            "aws": {"credentials_file": str(creds), "endpoint_url": "http://127.0.0.1:9"},
        },
    )
    result = runner.invoke(app, ["doctor", "--json", "-f", spec_file])
    assert result.exit_code == 1
    rows = {r["name"]: r for r in json.loads(result.stdout)["checks"]}
    assert rows["ssh.key.permissions"]["status"] == "fail" and rows["ssh.key.permissions"]["fix"] == f"chmod 600 {key}"
    assert rows["aws.credentials"]["status"] == "fail" and "[default]" in rows["aws.credentials"]["fix"]
    assert key.read_text().splitlines()[1] not in result.stdout
    # the table form names the failing rows too
    table = runner.invoke(app, ["doctor", "-f", spec_file], env={"COLUMNS": "200"})
    assert table.exit_code == 1 and "ssh.key.permissions" in table.stdout and "failed" in table.stdout


def test_exit_code_only_counts_failures():
    assert exit_code([CheckResult("a", Status.warn, "w", "f"), CheckResult("b", Status.skip, "s")]) == 0
    assert exit_code([CheckResult("a", Status.ok, "o"), CheckResult("b", Status.fail, "x", "fix")]) == 1
