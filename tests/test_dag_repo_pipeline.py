"""The template's DAGs against real services: a real ``moto_server`` (S3 + STS) and a real ``mlflow server``.

Each Dag run is a ``dag.test()`` in a fresh process with an SQLite metadata database and exactly the
environment of ``airflow_gitops.local.layout.dag_runtime_env`` (see ``airflow_gitops.dag_repo.harness``).
Under ``dag.test()`` a task has no DAG bundle, so the commit tag is ``unversioned``; the commit lookup
itself is tested against a real ``GitDagBundle`` on a local Git repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from airflow_gitops.dag_repo import template_dir
from airflow_gitops.dag_repo.harness import BUCKET, REGISTERED_MODEL, Sandbox, Services
from airflow_gitops.local.layout import dag_runtime_env


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    with Services(tmp_path_factory.mktemp("services")) as svc:
        yield svc


@pytest.fixture(scope="module")
def sandbox(services, tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("sandbox"), services.runtime_env()).setup()


@pytest.fixture(scope="module")
def mlflow_client(services):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=services.mlflow_url)


@pytest.fixture(scope="module")
def runs(sandbox):
    """The self-check, then three training runs: a first model, a worse one, a better one (one process)."""
    return dict(
        zip(
            ["selfcheck", "first", "worse", "better"],
            sandbox.run_dags(
                [
                    ("platform_selfcheck", {}),
                    # accuracy on breast_cancer's held-out split: ~0.958, ~0.923, ~0.986
                    ("ml_training_pipeline", {"model": "random_forest"}),
                    ("ml_training_pipeline", {"model": "decision_tree", "model_params": {"max_depth": 1}}),
                    ("ml_training_pipeline", {"model": "logistic_regression"}),
                ]
            ),
            strict=True,
        )
    )


def _dump(result) -> str:
    return json.dumps({k: v["state"] for k, v in result.tasks.items()}) + "\n" + result.output[-6000:]


def test_harness_env_has_the_platform_contract_keys(services):
    """The harness gives DAG code the same variables as the platform (layout.dag_runtime_env)."""
    from airflow_gitops.local.layout import Layout
    from airflow_gitops.spec import PlatformSpec

    try:
        layout = Layout(PlatformSpec())
    except Exception as exc:  # the spec may require fields; the keys are what matters
        pytest.skip(f"cannot build a default PlatformSpec to read dag_runtime_env's keys: {exc}")
    platform, ours = dag_runtime_env(layout), services.runtime_env()
    assert set(ours) == set(platform)
    same = (
        "MLFLOW_EXPERIMENT_NAME",
        "MLOPS_REGISTERED_MODEL",
        "MLOPS_DATA_BUCKET",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
    )
    assert {k: ours[k] for k in same} == {k: platform[k] for k in same}


def test_selfcheck_passes(runs):
    result = runs["selfcheck"]
    assert result.state == "success", _dump(result)
    report = result.xcom("selfcheck")
    assert report["ok"] is True
    assert set(report["checks"]) == {"aws_identity", "s3_write_read", "mlflow", "metadata_db", "bundle_version"}
    assert all(c["ok"] for c in report["checks"].values()), report
    assert "arn=arn:aws:sts::" in report["checks"]["aws_identity"]["detail"]
    assert f"s3://{BUCKET}/_selfcheck/" in report["checks"]["s3_write_read"]["detail"]
    assert report["bundle_version"] is None  # dag.test(): no bundle
    assert report["checks"]["bundle_version"]["detail"] == "none (unavailable)"
    assert "platform self-check: PASSED" in result.output


def test_selfcheck_fails_naming_aws_when_the_credentials_file_is_missing(sandbox, services):
    hidden = services.aws_credentials.with_suffix(".hidden")
    services.aws_credentials.rename(hidden)
    try:
        result = sandbox.run_dag("platform_selfcheck")
    finally:
        hidden.rename(services.aws_credentials)
    assert result.state == "failed", _dump(result)
    assert result.tasks["selfcheck"]["state"] == "failed"
    report = result.xcom("selfcheck", "report")
    assert report is not None and report["ok"] is False
    assert report["checks"]["aws_identity"]["ok"] is False
    assert (
        f"AWS_SHARED_CREDENTIALS_FILE={services.aws_credentials} does not exist"
        in (report["checks"]["aws_identity"]["detail"])
    )
    assert report["checks"]["mlflow"]["ok"] is True and report["checks"]["metadata_db"]["ok"] is True
    assert "platform self-check failed: aws_identity (" in result.output
    assert "platform self-check: FAILED" in result.output


def _succeeded(result):
    assert result.dag_id == "ml_training_pipeline"
    assert result.state == "success", _dump(result)
    assert all(t["state"] == "success" for t in result.tasks.values()), _dump(result)
    return result


def test_pipeline_registers_tags_and_promotes_only_better_models(runs, services, mlflow_client):
    import boto3

    # 1. first model: becomes champion (accuracy ~0.958 on breast_cancer)
    first = _succeeded(runs["first"])
    reg1 = first.xcom("register")
    assert reg1["promoted"] is True and reg1["reason"] == "no champion yet"
    v1 = mlflow_client.get_model_version(REGISTERED_MODEL, reg1["version"])
    run_id_1 = first.xcom("log_to_mlflow")["mlflow_run_id"]
    assert v1.run_id == run_id_1
    assert v1.tags["git.commit"] == "unversioned"  # dag.test(): no bundle, tagged explicitly
    assert v1.tags["airflow.bundle_version_source"] == "unavailable"
    assert v1.tags["mlflow.run_id"] == run_id_1
    assert v1.tags["airflow.run_id"].startswith("manual__")
    run1 = mlflow_client.get_run(run_id_1)
    assert run1.data.tags["git.commit"] == "unversioned"
    assert run1.data.params["model"] == "random_forest"
    assert run1.data.metrics["accuracy"] == pytest.approx(first.xcom("evaluate")["metrics"]["accuracy"])
    assert v1.tags["promotion"] == "no champion yet"
    # the dataset really is in S3 (read back independently of the DAG)
    s3 = boto3.client("s3", endpoint_url=services.s3_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    head = s3.head_object(Bucket=BUCKET, Key=first.xcom("ingest")["key"])
    assert head["ContentLength"] > 1000

    # 2. a worse model (a depth-1 tree, ~0.92): registered, champion does not move
    second = _succeeded(runs["worse"])
    reg2 = second.xcom("register")
    assert int(reg2["version"]) == int(reg1["version"]) + 1
    assert reg2["promoted"] is False and f"does not beat champion v{v1.version} " in reg2["reason"], reg2
    assert reg2["champion_version"] == str(v1.version)
    assert reg2["value"] < reg1["value"]
    assert mlflow_client.get_model_version(REGISTERED_MODEL, reg2["version"]).tags["promotion"] == reg2["reason"]

    # 3. a better model (scaled logistic regression, ~0.986): champion moves to it
    third = _succeeded(runs["better"])
    reg3 = third.xcom("register")
    # it beat v1, the champion at that time: v2 had not moved the alias
    assert reg3["promoted"] is True and f"beats champion v{v1.version} " in reg3["reason"], reg3
    assert reg3["value"] > reg1["value"]
    champion = mlflow_client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert str(champion.version) == reg3["version"]
    assert {"register", "log_to_mlflow", "evaluate", "train", "validate", "ingest"} == set(third.tasks)


BUNDLE_PROBE = r"""
import json, sys, types
sys.path.insert(0, sys.argv[2])
import mlops_common
from airflow.providers.git.bundles.git import GitDagBundle

def probe(version):
    bundle = GitDagBundle(name="dags-probe-" + str(bool(version)), tracking_ref="main", subdir="dags",
                          repo_url=sys.argv[1], version=version)
    bundle.initialize()
    return mlops_common.bundle_version({"ti": types.SimpleNamespace(bundle_instance=bundle)})

print("@@" + json.dumps({"unpinned": probe(None), "pinned": probe(sys.argv[3]),
                         "no_bundle": mlops_common.bundle_version({"ti": types.SimpleNamespace()})}))
"""


def _git_repo(tmp_path):
    """A bare Git repository holding the template (two commits); returns (bare path, first sha, head sha)."""
    if shutil.which("git") is None:
        pytest.skip("git binary not installed: GitDagBundle needs it")
    work = tmp_path / "work"
    shutil.copytree(template_dir(), work, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], check=True)
    first = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (work / "dags" / "README.txt").write_text("second commit\n")
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "second"], check=True)
    head = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    bare = tmp_path / "dags.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare, first, head


def test_bundle_version_is_the_commit_under_a_real_git_dag_bundle(sandbox, tmp_path):
    """mlops_common.bundle_version() against Airflow's real GitDagBundle on a local repository."""
    bare, first, head = _git_repo(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", BUNDLE_PROBE, str(bare), str(template_dir() / "dags"), first],
        env=sandbox.env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = json.loads(lines[-1][2:])
    assert found["unpinned"] == [head, "bundle_instance.get_current_version()"]
    assert found["pinned"] == [first, "bundle_instance.version"]
    assert found["no_bundle"] == [None, "unavailable"]


GIT_MODEL = REGISTERED_MODEL + "-git"


@pytest.fixture(scope="module")
def git_runs(services, tmp_path_factory):
    """Both DAGs with every task in its own process (LocalExecutor + a real api-server), DAGs from a GitDagBundle."""
    root = tmp_path_factory.mktemp("git-bundle")
    bare, _, head = _git_repo(root)
    env = {**services.runtime_env(), "MLOPS_REGISTERED_MODEL": GIT_MODEL}  # own model: no effect on the test above
    sandbox = Sandbox(root / "sandbox", env, git_repo=str(bare)).setup()
    sandbox.start_api_server()
    try:
        selfcheck, pipeline = sandbox.run_dags(
            [("platform_selfcheck", {"require_bundle_version": True}), ("ml_training_pipeline", {})], timeout=420
        )
    finally:
        sandbox.stop_api_server()
    return head, selfcheck, pipeline


def test_selfcheck_in_a_task_process_reports_the_git_commit(git_runs):
    head, selfcheck, _ = git_runs
    assert selfcheck.state == "success", _dump(selfcheck)
    report = selfcheck.xcom("selfcheck")
    assert report["ok"] is True and report["bundle_version"] == head, report
    assert report["checks"]["bundle_version"]["detail"] == f"{head} (from bundle_instance.get_current_version())"
    assert selfcheck.tasks["selfcheck"].get("task_process_rss_peak_mb", 0) > 50  # ran in its own process


def test_pipeline_in_task_processes_tags_the_model_version_with_the_git_commit(git_runs, mlflow_client):
    head, _, pipeline = git_runs
    assert pipeline.state == "success", _dump(pipeline)
    assert all(t.get("task_process_rss_peak_mb", 0) > 50 for t in pipeline.tasks.values()), pipeline.tasks
    reg = pipeline.xcom("register")
    assert reg["git_commit"] == head and reg["model"] == GIT_MODEL
    version = mlflow_client.get_model_version(GIT_MODEL, reg["version"])
    assert version.tags["git.commit"] == head
    assert version.tags["airflow.bundle_version_source"] == "bundle_instance.get_current_version()"
    assert mlflow_client.get_run(version.run_id).data.tags["git.commit"] == head


VALIDATE_PROBE = r"""
import json, runpy, sys
sys.path.insert(0, sys.argv[1])
dag = runpy.run_path(sys.argv[1] + "/ml_training_pipeline.py")["ml_training_pipeline"]()
validate = dag.task_dict["validate"].python_callable
try:
    validate({"bucket": sys.argv[2], "key": sys.argv[3], "dataset": "planted"})
except ValueError as exc:
    print("@@" + json.dumps({"raised": str(exc)}))
else:
    print("@@" + json.dumps({"raised": None}))
"""


def test_validate_rejects_a_bad_dataset_with_a_readable_reason(sandbox, services):
    """The validate task's own code, on a planted bad Parquet file in the real S3 endpoint."""
    import io

    import boto3
    import pandas as pd

    frame = pd.DataFrame(
        {
            "x1": [float(i) for i in range(100)],
            "x2": [None if i < 3 else 1.0 for i in range(100)],  # 3 nulls
            "target": [1 if i < 2 else 0 for i in range(100)],  # class 1 is 2% of the rows
        }
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    s3 = boto3.client("s3", endpoint_url=services.s3_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_object(Bucket=BUCKET, Key="planted/bad.parquet", Body=buf.getvalue())
    proc = subprocess.run(
        [sys.executable, "-c", VALIDATE_PROBE, str(sandbox.dags), BUCKET, "planted/bad.parquet"],
        env=sandbox.env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = json.loads(lines[-1][2:])["raised"]
    assert message is not None, "validate accepted a dataset with nulls and a 2% class"
    assert message.startswith(f"dataset s3://{BUCKET}/planted/bad.parquet failed validation: ")
    assert "null values: {'x2': 3}" in message
    assert "class imbalance: classes below 5% of rows: {1: 0.02}" in message
