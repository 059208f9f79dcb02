"""platform.yaml -> PlatformSpec: defaults, and one clear message per invalid key that starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airflow_gitops.init import TEMPLATE
from airflow_gitops.spec import SpecError, load_spec, parse_spec

CLI = [sys.executable, "-m", "airflow_gitops.cli"]


def test_embedded_defaults_serve_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec()
    assert spec.dags.repo is None and spec.dag_repo_url == str(tmp_path / ".airflow-gitops" / "dags.git")
    assert spec.database.url is None and spec.aws.credentials_file is None
    assert spec.airflow.executor == "KubernetesExecutor"
    assert (spec.dags.branch, spec.dags.sub_path, spec.dags.depth, spec.dags.sync_interval) == ("main", "dags", 1, 1)
    remote = parse_spec({"dags": {"repo": "https://example.com/org/dags.git"}})
    assert remote.dags.sync_interval == 10  # the seed's git-sync period for a remote repository


def test_init_template_is_the_defaults():
    assert parse_spec(yaml.safe_load(TEMPLATE)).model_dump() == parse_spec({}).model_dump()


# (yaml text, key path expected in the message, a word of the fix expected in the message)
INVALID = [
    ("dags: {sub_pth: dags}", "dags.sub_pth", "spelling"),
    ("dags: {depth: -1}", "dags.depth", "greater than or equal"),
    ("dags: {sync_interval: often}", "dags.sync_interval", "often"),
    ("dags: {repo: 'git@github.com:org/dags.git'}", "dags", "ssh_key_file"),
    ("dags: {repo: 'not a url'}", "dags.repo", "git@host:org/repo.git"),
    ("dags: {branch: '../main'}", "dags.branch", "main"),
    ("dags: {sub_path: '../outside'}", "dags.sub_path", "inside the repository"),
    ("dags: {delivery: rsync}", "dags.delivery", "git-sync"),
    ("airflow: {executor: SequentialExecutor}", "airflow.executor", "KubernetesExecutor"),
    ("airflow: {config: {core: {fernet_key: x}}}", "airflow.config", "generated once"),
    ("database: {url: 'mysql://u:p@h/db'}", "database.url", "postgresql://"),
    ("database: {url: 'postgresql://u:p@ss@h/db'}", "database.url", "%40"),
    ("aws: {region: Seoul}", "aws.region", "ap-northeast-2"),
    ("aws: {bucket: My_Bucket}", "aws.bucket", "3-63"),
    ("mlflow: {tracking_uri: 'mlflow:5000'}", "mlflow.tracking_uri", "http://"),
    ("secrets: {fernet_key_secret: My_Secret}", "secrets.fernet_key_secret", "lower-case"),
    ("local: {ports: {api: 80}}", "local.ports.api", "1024"),
    ("local: {ports: {api: 5000, mlflow: 5000}}", "local.ports", "pick two"),
    ("ingress: {host: 'Airflow Local'}", "ingress.host", "lower-case"),
    ("kubernetes: {namespace: Airflow_NS}", "kubernetes.namespace", "DNS label"),
    ("image: {tag: 'v 1'}", "image.tag", "letters"),
    ("logs: {size: ten}", "logs.size", "10Gi"),
    ("serving: {alias: latest}", "serving.alias", "champion"),
    ("serving: {alias: v3}", "serving.alias", "reserves"),
    ("serving: {model: 'models:/m'}", "serving.model", "registered model name"),
    ("serving: {poll_interval: 0}", "serving.poll_interval", "greater than or equal"),
    ("serving: {max_body_bytes: 10}", "serving.max_body_bytes", "greater than or equal"),
    ("serving: {enable: true}", "serving.enable", "spelling"),
    ("local: {ports: {serving: 5000}}", "local.ports", "pick two"),
    ("- just\n- a list", "(top level)", "mapping"),
    ("dags: [unclosed", "line", "YAML"),
]


def test_serving_defaults_follow_the_template_pipeline():
    """On by default; the model the template's pipeline registers, its alias, its own port."""
    import re

    import airflow_gitops.dag_repo as dag_repo

    pipeline = (Path(dag_repo.__file__).parent / "template" / "dags" / "ml_training_pipeline.py").read_text()
    pipeline_alias = re.search(r'^CHAMPION_ALIAS = "([^"]+)"', pipeline, re.M).group(1)
    spec = parse_spec({})
    assert spec.serving.enabled and spec.serving.alias == pipeline_alias == "champion"
    assert spec.local.ports.serving == 5001
    assert spec.serving_model == spec.mlflow.registered_model == "mlops-classifier"
    spec = parse_spec({"mlflow": {"registered_model": "churn"}})
    assert spec.serving_model == "churn"
    assert parse_spec({"mlflow": {"registered_model": "churn"}, "serving": {"model": "fraud"}}).serving_model == "fraud"


@pytest.mark.parametrize(("text", "key", "fix"), INVALID, ids=[c[1] + ":" + c[0][:20] for c in INVALID])
def test_invalid_key_gives_its_path_and_fix(tmp_path, text, key, fix):
    path = tmp_path / "platform.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = err.value.render()
    assert key in message and fix in message, message


def test_invalid_spec_via_cli_starts_nothing(tmp_path):
    (tmp_path / "platform.yaml").write_text("dags: {depth: -1, sub_pth: x}\naws: {region: Seoul}\n")
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([*CLI, "up"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "3 problems" in result.stderr and "aws.region" in result.stderr and "dags.sub_pth" in result.stderr
    assert "nothing was started" in result.stderr
    assert not (tmp_path / ".airflow-gitops").exists()


def test_missing_spec_file_names_init(tmp_path):
    result = subprocess.run([*CLI, "status", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert result.returncode == 1 and "airflow-gitops init" in result.stderr


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "platform.yaml"
    path.write_text("local: {state_dir: ../state}\naws: {credentials_file: creds}\n")
    spec = load_spec(path)
    assert spec.state_dir == (tmp_path / "state").resolve()
    assert spec.path(spec.aws.credentials_file) == (tmp_path / "conf" / "creds").resolve()


def test_database_url_from_environment(monkeypatch):
    spec = parse_spec({"database": {"url": "${TEST_AIRFLOW_DB}"}})
    monkeypatch.delenv("TEST_AIRFLOW_DB", raising=False)
    with pytest.raises(SpecError, match="not set"):
        spec.database.resolved_url()
    monkeypatch.setenv("TEST_AIRFLOW_DB", "postgresql://u:p%40ss@h:5432/db")
    assert spec.database.resolved_url() == "postgresql://u:p%40ss@h:5432/db"


def test_init_writes_valid_spec_and_private_deploy_key(tmp_path):
    result = subprocess.run([*CLI, "init", str(tmp_path), "--deploy-key"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    load_spec(tmp_path / "platform.yaml")
    key = tmp_path / "deploy_key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert "ssh-ed25519 " in result.stdout
    assert "PRIVATE KEY" not in result.stdout and key.read_text().split("\n")[1] not in result.stdout
    assert "deploy_key" in Path(tmp_path / ".gitignore").read_text()
