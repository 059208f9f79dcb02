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
    ("logs: {remote: gcs}", "logs.remote", "'s3'"),
    ("logs: {remote: S3}", "logs.remote", "'s3'"),
    ("logs: {remote: true}", "logs.remote", "null / false"),
    ("logs: {remote_prefix: /airflow-logs}", "logs.remote_prefix", "no leading or trailing '/'"),
    ("logs: {remote_prefix: 'a/../b'}", "logs.remote_prefix", "S3 key prefix"),
    ("logs: {remote_prefix: 'a%b'}", "logs.remote_prefix", "S3 key prefix"),
    (
        "logs: {remote: s3}\nairflow: {config: {logging: {remote_base_log_folder: 's3://x/y'}}}",
        "airflow.config.logging.remote_base_log_folder",
        "logs.remote: null",
    ),
    ("connections: {airflow_gitops_logs: {conn_type: aws}}", "connections.airflow_gitops_logs", "pick another id"),
    ("serving: {alias: latest}", "serving.alias", "champion"),
    ("serving: {alias: v3}", "serving.alias", "reserves"),
    ("serving: {model: 'models:/m'}", "serving.model", "registered model name"),
    ("serving: {poll_interval: 0}", "serving.poll_interval", "greater than or equal"),
    ("serving: {max_body_bytes: 10}", "serving.max_body_bytes", "greater than or equal"),
    ("serving: {enable: true}", "serving.enable", "spelling"),
    ("serving: {replicas: 0}", "serving.replicas", "greater than or equal"),
    ("serving: {replicas: two}", "serving.replicas", "integer"),
    ("serving: {ingress_host: 'Model Host'}", "serving.ingress_host", "lower-case"),
    ("local: {ports: {serving: 5000}}", "local.ports", "pick two"),
    ("- just\n- a list", "(top level)", "mapping"),
    ("dags: [unclosed", "line", "YAML"),
]


def test_logs_remote_is_off_unless_asked_for(tmp_path):
    """Default: the seed's PVC mode, no remote logging; YAML's off/false/null all mean off."""
    assert (parse_spec({}).logs.remote, parse_spec({}).logs.remote_prefix) == (None, "airflow-logs")
    for text in ("off", "false", "no", "null", "~"):
        path = tmp_path / "platform.yaml"
        path.write_text(f"logs: {{remote: {text}}}\n")
        assert load_spec(path).logs.remote is None, text
    spec = parse_spec({"logs": {"remote": "s3", "remote_prefix": "team-a/airflow"}})
    assert (spec.logs.remote, spec.logs.remote_prefix, spec.logs.persistence) == ("s3", "team-a/airflow", True)
    # Without logs.remote, airflow.config may still configure remote logging itself (another backend).
    own = {"logging": {"remote_logging": True, "remote_base_log_folder": "gs://b/logs", "remote_log_conn_id": "g"}}
    assert parse_spec({"airflow": {"config": own}}).airflow.config["logging"]["remote_base_log_folder"] == "gs://b/logs"


def test_serving_defaults_follow_the_template_pipeline():
    """On by default; the model the template's pipeline registers, its alias, its own port."""
    import re

    import airflow_gitops.dag_repo as dag_repo

    pipeline = (Path(dag_repo.__file__).parent / "template" / "dags" / "ml_training_pipeline.py").read_text()
    pipeline_alias = re.search(r'^CHAMPION_ALIAS = "([^"]+)"', pipeline, re.M).group(1)
    spec = parse_spec({})
    assert spec.serving.enabled and spec.serving.alias == pipeline_alias == "champion"
    assert spec.local.ports.serving == 5001
    assert spec.serving.replicas == 2 and spec.serving.ingress_host is None  # Kubernetes: two pods, no Ingress
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


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("chart_version", "--post-renderer=/tmp/x", "a chart version such as 1.21.0"),
        ("chart_version", "1.21.0 --set x=1", "a chart version such as 1.21.0"),
        ("chart_version", "1.21.0\n", "a chart version such as 1.21.0"),
        ("chart_version", "latest", "a chart version such as 1.21.0"),
        ("context", "--kubeconfig=/tmp/x", "kubectl config get-contexts"),
        ("context", "-x", "kubectl config get-contexts"),
        ("context", "kind kind", "kubectl config get-contexts"),
        ("context", "prod\n", "kubectl config get-contexts"),
        ("context", "prod\x1b[31m", "kubectl config get-contexts"),
        ("context", "", "kubectl config get-contexts"),
    ],
)
def test_kubernetes_chart_version_and_context_cannot_be_options(key, value, fix):
    with pytest.raises(SpecError) as err:
        parse_spec({"kubernetes": {key: value}})
    message = err.value.render()
    lines = [ln for ln in message.splitlines() if f"kubernetes.{key}" in ln]
    assert len(lines) == 1 and fix in lines[0], message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("chart_version", "1.21.0"),
        ("chart_version", "1.22.0-rc.1+build.5"),
        ("chart_version", "v1.21"),
        ("context", "kind-airflow"),
        ("context", "arn:aws:eks:eu-west-1:123456789012:cluster/prod"),
        ("context", "gke_project_europe-west1_cluster@admin"),
    ],
)
def test_kubernetes_chart_version_and_context_accept_real_names(key, value):
    assert getattr(parse_spec({"kubernetes": {key: value}}).kubernetes, key) == value


# Every value checked by a whole-value pattern, with a trailing newline (Python's `$` matches before one).
TRAILING_NEWLINE = [
    ({"kubernetes": {"namespace": "airflow\n"}}, "kubernetes.namespace"),
    ({"kubernetes": {"release": "airflow\n"}}, "kubernetes.release"),
    ({"image": {"repository": "ghcr.io/org/airflow\n"}}, "image.repository"),
    ({"image": {"tag": "v1\n"}}, "image.tag"),
    ({"airflow": {"config": {"core\n": {"dag_file_processor_timeout": 60}}}}, "airflow.config"),
    ({"airflow": {"config": {"core": {"dag_file_processor_timeout\n": 60}}}}, "airflow.config"),
    ({"aws": {"profile": "default\n"}}, "aws.profile"),
    ({"aws": {"region": "us-east-1\n"}}, "aws.region"),
    ({"aws": {"bucket": "mlops-data\n"}}, "aws.bucket"),
    ({"aws": {"endpoint_url": "https://s3.example.com\n"}}, "aws.endpoint_url"),
    ({"mlflow": {"tracking_uri": "databricks\n"}}, "mlflow.tracking_uri"),
    ({"logs": {"size": "10Gi\n"}}, "logs.size"),
    ({"logs": {"existing_claim": "airflow-logs\n"}}, "logs.existing_claim"),
    ({"logs": {"remote": "s3\n"}}, "logs.remote"),
    ({"logs": {"remote_prefix": "airflow-logs\n"}}, "logs.remote_prefix"),
    ({"ingress": {"host": "airflow.local\n"}}, "ingress.host"),
    ({"secrets": {"fernet_key_secret": "airflow-fernet-key\n"}}, "secrets.fernet_key_secret"),
    ({"local": {"preload": ["pandas\n"]}}, "local.preload"),
    ({"connections": {"warehouse\n": {"conn_type": "postgres"}}}, "connections"),
    ({"variables": {"threshold\n": "0.9"}}, "variables"),
    ({"pools": {"training\n": {"slots": 2}}}, "pools"),
]


def _strip_newlines(data):
    if isinstance(data, dict):
        return {_strip_newlines(k): _strip_newlines(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_strip_newlines(v) for v in data]
    return data.rstrip("\n") if isinstance(data, str) else data


@pytest.mark.parametrize(("data", "key"), TRAILING_NEWLINE, ids=[k + ":" + repr(d)[:40] for d, k in TRAILING_NEWLINE])
def test_no_validator_accepts_a_trailing_newline(tmp_path, data, key):
    parse_spec(_strip_newlines(data), base_dir=tmp_path)  # the same value without the newline is valid
    with pytest.raises(SpecError) as err:
        parse_spec(data, base_dir=tmp_path)
    assert [where for where, _ in err.value.problems if where.startswith(key)], err.value.render()


@pytest.mark.parametrize("repo", ["git://github.com/org/dags.git", "http://git.example.com/org/dags.git", "HTTP://h/r"])
def test_dag_repo_over_an_unauthenticated_channel_is_refused(repo):
    with pytest.raises(SpecError) as err:
        parse_spec({"dags": {"repo": repo}})
    (line,) = [ln for ln in err.value.render().splitlines() if "dags.repo" in ln]
    assert "unauthenticated" in line and "https://" in line and "ssh" in line, line


@pytest.mark.parametrize("repo", ["https://github.com/org/dags.git", "file:///srv/git/dags.git", "/srv/git/dags.git"])
def test_dag_repo_over_https_or_a_local_path_is_accepted(repo):
    assert parse_spec({"dags": {"repo": repo}}).dags.repo == repo
