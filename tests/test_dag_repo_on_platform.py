"""The template's DAGs on the real local platform: GitDagBundle from the seeded repository, LocalExecutor
task processes, the platform's MLflow server and S3 endpoint, the generated AWS files."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import DagRepo, wait_for

from airflow_gitops.dag_repo import template_dir

pytestmark = pytest.mark.platform  # starts a real local platform

PIPELINE = "ml_training_pipeline"
TASKS = ["ingest", "validate", "train", "evaluate", "log_to_mlflow", "register", "served"]


@pytest.fixture(scope="module")
def mlflow_client(local_platform):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=local_platform.layout.mlflow_url)


@pytest.fixture
def s3(local_platform, monkeypatch):
    """boto3 S3 client from the platform's own AWS files (credentials, config), on its S3 endpoint."""
    import boto3

    layout = local_platform.layout
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(layout.aws_credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(layout.aws_config))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    session = boto3.Session(profile_name=local_platform.spec.aws.profile)
    return session.client("s3", endpoint_url=layout.s3_url)


def _run(platform, dag_id: str, conf: dict | None = None) -> tuple[dict, str]:
    client = platform.client()
    # right after `up` the DAG processor may not have parsed the seeded repository yet
    wait_for(lambda: dag_id in client.dag_ids(), 120, f"Airflow to list {dag_id}")
    run_id = client.trigger(dag_id, conf)
    run = client.wait_run(dag_id, run_id, timeout=300)
    return run, run_id


def _dump(platform, dag_id: str, run_id: str) -> str:
    client = platform.client()
    tis = {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}
    failed = [t for t, s in tis.items() if s != "success"]
    logs = "".join(f"\n--- {t} ---\n{platform.client().task_log(dag_id, run_id, t)[-3000:]}" for t in failed[:2])
    return json.dumps(tis) + logs


def _succeeded(platform, run_id: str, run: dict) -> dict:
    """The run and all six tasks succeeded; returns {task_id: task instance}."""
    assert run["state"] == "success", _dump(platform, PIPELINE, run_id)
    tis = {t["task_id"]: t for t in platform.client().task_instances(PIPELINE, run_id)}
    assert set(tis) == set(TASKS)
    assert all(t["state"] == "success" for t in tis.values()), tis
    return tis


def test_pipeline_tags_the_commit_and_promotes_only_better_models(local_platform, mlflow_client, s3):
    import pandas as pd

    client = local_platform.client()
    model = local_platform.spec.mlflow.registered_model
    bucket = local_platform.spec.aws.bucket
    head = local_platform.status().branch_head

    # accuracy on breast_cancer's held-out split: random forest ~0.958, depth-1 tree ~0.923, logistic ~0.986
    first, first_id = _run(local_platform, PIPELINE, {"model": "random_forest"})
    _succeeded(local_platform, first_id, first)
    reg1 = client.xcom(PIPELINE, first_id, "register")
    assert reg1["promoted"] is True and reg1["reason"] == "no champion yet", reg1
    v1 = mlflow_client.get_model_version(model, reg1["version"])
    assert v1.tags["git.commit"] == first["bundle_version"] == head
    assert v1.tags["airflow.run_id"] == first_id
    assert v1.tags["mlflow.run_id"] == v1.run_id
    assert v1.tags["promotion"] == "no champion yet"
    champion = mlflow_client.get_model_version_by_alias(model, "champion")
    assert champion.version == v1.version

    # the MLflow run: what was trained on what, and the metrics the evaluate task computed
    ingest = client.xcom(PIPELINE, first_id, "ingest")
    evaluate = client.xcom(PIPELINE, first_id, "evaluate")
    run1 = mlflow_client.get_run(v1.run_id)
    assert run1.data.tags["git.commit"] == head
    assert run1.data.tags["airflow.run_id"] == first_id
    assert run1.data.params["model"] == "random_forest"
    assert run1.data.params["dataset"] == "breast_cancer"
    assert run1.data.params["data_uri"] == f"s3://{bucket}/{ingest['key']}"
    assert int(run1.data.params["train_rows"]) + int(run1.data.params["test_rows"]) == ingest["rows"]
    for name in ("accuracy", "f1_macro", "balanced_accuracy", "log_loss"):
        assert run1.data.metrics[name] == pytest.approx(evaluate["metrics"][name]), name
    assert run1.data.metrics["accuracy"] == pytest.approx(reg1["value"])
    assert 0.9 < reg1["value"] < 1.0

    # the dataset really is in S3, read back independently of the DAG with the platform's AWS files
    assert ingest["bucket"] == bucket and ingest["key"] == f"datasets/breast_cancer/{first_id}/raw.parquet"
    frame = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=ingest["key"])["Body"].read()))
    assert len(frame) == ingest["rows"] == 569  # breast_cancer
    assert "target" in frame.columns and frame.shape[1] == 31 and set(frame["target"]) == {0, 1}
    trained = client.xcom(PIPELINE, first_id, "train")
    assert s3.head_object(Bucket=bucket, Key=trained["model_key"])["ContentLength"] > 1000

    worse, worse_id = _run(local_platform, PIPELINE, {"model": "decision_tree", "model_params": {"max_depth": 1}})
    _succeeded(local_platform, worse_id, worse)
    reg2 = client.xcom(PIPELINE, worse_id, "register")
    assert int(reg2["version"]) == int(reg1["version"]) + 1
    assert reg2["promoted"] is False and f"does not beat champion v{v1.version} " in reg2["reason"], reg2
    assert reg2["value"] < reg1["value"] and reg2["champion_version"] == str(v1.version)
    assert mlflow_client.get_model_version(model, reg2["version"]).tags["promotion"] == reg2["reason"]
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == champion.version
    run2 = mlflow_client.get_run(client.xcom(PIPELINE, worse_id, "log_to_mlflow")["mlflow_run_id"])
    assert json.loads(run2.data.params["model_params"]) == {"max_depth": 1}

    better, better_id = _run(local_platform, PIPELINE, {"model": "logistic_regression"})
    _succeeded(local_platform, better_id, better)
    reg3 = client.xcom(PIPELINE, better_id, "register")
    # it beat v1, the champion at that time: v2 had not moved the alias
    assert reg3["promoted"] is True and f"beats champion v{v1.version} " in reg3["reason"], reg3
    assert reg3["value"] > reg1["value"]
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == reg3["version"]

    # The champion is served back the way step 5's FastAPI server loads it: models:/NAME@champion,
    # through the tracking server, whose artifacts live in the platform's S3 bucket.
    import mlflow

    mlflow.set_tracking_uri(local_platform.layout.mlflow_url)
    try:
        champion_model = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    finally:
        mlflow.set_tracking_uri(None)
    frame = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=ingest["key"])["Body"].read()))
    predictions = champion_model.predict(frame.drop(columns=["target"]).head(5))
    assert len(predictions) == 5 and set(predictions) <= set(frame["target"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mlflow-artifacts/")["Contents"]]
    assert [k for k in keys if "MLmodel" in k], keys[:20]

    # The platform's serving component: each run's last task waited for it, it answers with the champion
    # now, trained from the branch head, and predicts what the model itself predicts.
    import httpx

    assert client.xcom(PIPELINE, first_id, "served") == {"served": reg1["version"]}
    assert client.xcom(PIPELINE, worse_id, "served") == {"served": str(v1.version)}
    assert client.xcom(PIPELINE, better_id, "served") == {"served": reg3["version"]}
    url = local_platform.layout.serving_url
    info = httpx.get(f"{url}/model", timeout=10).json()
    assert info["served"]["version"] == reg3["version"] and info["served"]["git_commit"] == head, info
    rows = frame.drop(columns=["target"]).head(5)
    answer = httpx.post(f"{url}/predict", json=json.loads(rows.to_json(orient="records", double_precision=15)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == reg3["version"]
    assert answer.json()["predictions"] == champion_model.predict(rows).tolist()
    from airflow_gitops.checks.serving import serving_rows
    from airflow_gitops.local.layout import dag_runtime_env

    checks = {r.name: r for r in serving_rows(url, dag_runtime_env(local_platform.layout))}
    assert [str(r.status) for r in checks.values()] == ["ok", "ok"], checks
    assert f"v{reg3['version']}" in checks["verify.serving"].saw
    assert "the model's own prediction" in checks["verify.serving.prediction"].saw

    # `airflow-gitops predict`: the served model's own input example by default; bad records, one message
    from conftest import quiet_console

    from airflow_gitops.errors import PlatformError
    from airflow_gitops.local.predict import predict

    console = quiet_console()
    said = predict(local_platform, None, console)
    assert said["version"] == reg3["version"] and len(said["predictions"]) == 2  # the logged example's rows
    assert f'"version": "{reg3["version"]}"' in console.export_text()
    with pytest.raises(PlatformError) as err:
        predict(local_platform, '[{"no such column": 1}]', quiet_console())
    assert "422" in err.value.problem and "unknown column 'no such column'" in err.value.problem


def test_selfcheck_passes_and_fails_naming_aws_without_credentials(local_platform):
    client = local_platform.client()
    bucket = local_platform.spec.aws.bucket
    run, run_id = _run(local_platform, "platform_selfcheck", {"require_bundle_version": True})
    assert run["state"] == "success", _dump(local_platform, "platform_selfcheck", run_id)
    report = client.xcom("platform_selfcheck", run_id, "selfcheck")
    assert report["ok"] and report["bundle_version"] == run["bundle_version"]
    assert set(report["checks"]) == {"aws_identity", "s3_write_read", "mlflow", "metadata_db", "bundle_version"}
    assert all(c["ok"] for c in report["checks"].values()), report
    # The local S3 endpoint has no STS: the check proves the credentials are checked (a wrong secret is refused).
    identity = report["checks"]["aws_identity"]["detail"]
    assert "accepted by http://127.0.0.1:" in identity and "a wrong secret refused (SignatureDoesNotMatch)" in identity
    assert f"s3://{bucket}/_selfcheck/" in report["checks"]["s3_write_read"]["detail"]
    assert report["checks"]["bundle_version"]["detail"].startswith(f"{run['bundle_version']} (from bundle_instance.")
    assert "platform self-check: PASSED" in client.task_log("platform_selfcheck", run_id, "selfcheck")

    creds = local_platform.layout.aws_credentials
    hidden = creds.with_name("credentials.hidden")
    creds.rename(hidden)
    try:
        run, run_id = _run(local_platform, "platform_selfcheck")
    finally:
        hidden.rename(creds)
    assert run["state"] == "failed"
    tis = {t["task_id"]: t["state"] for t in client.task_instances("platform_selfcheck", run_id)}
    assert tis["selfcheck"] == "failed", tis
    report = client.xcom("platform_selfcheck", run_id, "selfcheck", key="report")
    assert not report["ok"] and not report["checks"]["aws_identity"]["ok"]
    assert report["checks"]["mlflow"]["ok"] and report["checks"]["metadata_db"]["ok"], "only the AWS part is missing"
    assert f"AWS_SHARED_CREDENTIALS_FILE={creds} does not exist" in report["checks"]["aws_identity"]["detail"]
    log = local_platform.client().task_log("platform_selfcheck", run_id, "selfcheck")
    assert "platform self-check: FAILED" in log
    assert "platform self-check failed: aws_identity (" in log


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


def _git(*args: str, cwd=None) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_bundle_version_pinned_and_unpinned_under_a_real_git_dag_bundle(tmp_path):
    """mlops_common.bundle_version() against Airflow's GitDagBundle (no platform): a pinned bundle answers
    its pinned commit (not the branch head), an unpinned one its checkout, no bundle at all ``unavailable``."""
    if shutil.which("git") is None:
        pytest.skip("git binary not installed: GitDagBundle needs it")
    work = tmp_path / "work"
    shutil.copytree(template_dir(), work, ignore=shutil.ignore_patterns("__pycache__"))
    _git("init", "-q", str(work))
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "first", cwd=work)
    first = _git("rev-parse", "HEAD", cwd=work)
    (work / "dags" / "README.txt").write_text("second commit\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "second", cwd=work)
    head = _git("rev-parse", "HEAD", cwd=work)
    bare = tmp_path / "dags.git"
    _git("clone", "-q", "--bare", str(work), str(bare))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH"] = str(tmp_path / "bundles")
    proc = subprocess.run(
        [sys.executable, "-c", BUNDLE_PROBE, str(bare), str(template_dir() / "dags"), first],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = json.loads(lines[-1][2:])
    assert first != head
    assert found["unpinned"] == [head, "bundle_instance.get_current_version()"]
    assert found["pinned"] == [first, "bundle_instance.version"]
    assert found["no_bundle"] == [None, "unavailable"]


VALIDATE_DAG = '''
"""Test probe (tests/test_dag_repo_on_platform.py): the template's validate task on a planted dataset."""
import os
from datetime import datetime

from airflow.sdk import dag, get_current_context, task


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     tags=["test"], default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def validate():
        import runpy

        conf = get_current_context()["dag_run"].conf
        here = os.path.dirname(os.path.abspath(__file__))
        pipeline = runpy.run_path(os.path.join(here, "ml_training_pipeline.py"))["ml_training_pipeline"]()
        check = pipeline.task_dict["validate"].python_callable
        return check({{"bucket": conf["bucket"], "key": conf["key"], "dataset": "planted"}})

    validate()


_d()
'''


def _plant(s3, bucket: str, key: str, frame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_validate_rejects_a_bad_dataset_with_a_readable_reason(local_platform, s3, tmp_path):
    """The template's validate code in a task process on the platform, on planted Parquet files in its S3:
    a bad dataset fails the run and the task log says why; a good one passes (the probe is not always red)."""
    import pandas as pd

    client = local_platform.client()
    bucket = local_platform.spec.aws.bucket
    dag_id = "t_validate_probe_" + uuid.uuid4().hex[:6]
    repo = DagRepo(local_platform.spec.dag_repo_url, tmp_path / "work")
    repo.push({f"dags/{dag_id}.py": VALIDATE_DAG.format(dag_id=dag_id)}, f"add {dag_id}")
    wait_for(lambda: dag_id in client.dag_ids(), 90, f"{dag_id} to be listed")

    bad = pd.DataFrame(
        {
            "x1": [float(i) for i in range(100)],
            "x2": [None if i < 3 else 1.0 for i in range(100)],  # 3 nulls
            "target": [1 if i < 2 else 0 for i in range(100)],  # class 1 is 2% of the rows
        }
    )
    good = bad.assign(x2=1.0, target=[i % 2 for i in range(100)])
    _plant(s3, bucket, f"planted/{dag_id}/bad.parquet", bad)
    _plant(s3, bucket, f"planted/{dag_id}/good.parquet", good)

    run, run_id = _run(local_platform, dag_id, {"bucket": bucket, "key": f"planted/{dag_id}/good.parquet"})
    assert run["state"] == "success", _dump(local_platform, dag_id, run_id)
    assert client.xcom(dag_id, run_id, "validate")["class_shares"] == {"0": 0.5, "1": 0.5}

    run, run_id = _run(local_platform, dag_id, {"bucket": bucket, "key": f"planted/{dag_id}/bad.parquet"})
    assert run["state"] == "failed"
    tis = {t["task_id"]: t["state"] for t in client.task_instances(dag_id, run_id)}
    assert tis == {"validate": "failed"}
    log = local_platform.client().task_log(dag_id, run_id, "validate")
    assert f"dataset s3://{bucket}/planted/{dag_id}/bad.parquet failed validation: " in log, log[-3000:]
    assert "null values: {'x2': 3}" in log
    assert "class imbalance: classes below 5% of rows: {1: 0.02}" in log
