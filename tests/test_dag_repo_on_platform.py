"""The template's DAGs on the real local platform: GitDagBundle from the seeded repository, LocalExecutor
task processes, the platform's MLflow server and S3 endpoint, the generated AWS files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mlflow_client(local_platform):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=local_platform.layout.mlflow_url)


def _run(platform, dag_id: str, conf: dict | None = None) -> tuple[dict, str]:
    client = platform.client()
    run_id = client.trigger(dag_id, conf)
    run = client.wait_run(dag_id, run_id, timeout=300)
    return run, run_id


def test_pipeline_tags_the_commit_and_promotes_only_better_models(local_platform, mlflow_client):
    client = local_platform.client()
    model = local_platform.spec.mlflow.registered_model
    head = local_platform.status()["branch_head"]

    # accuracy on breast_cancer's held-out split: random forest ~0.958, depth-1 tree ~0.923, logistic ~0.986
    first, first_id = _run(local_platform, "ml_training_pipeline", {"model": "random_forest"})
    assert first["state"] == "success"
    reg1 = client.xcom("ml_training_pipeline", first_id, "register")
    v1 = mlflow_client.get_model_version(model, reg1["version"])
    assert v1.tags["git.commit"] == first["bundle_version"] == head
    assert v1.tags["airflow.run_id"] == first_id
    assert v1.tags["mlflow.run_id"] == v1.run_id
    champion = mlflow_client.get_model_version_by_alias(model, "champion")

    worse, worse_id = _run(
        local_platform, "ml_training_pipeline", {"model": "decision_tree", "model_params": {"max_depth": 1}}
    )
    assert worse["state"] == "success"
    reg2 = client.xcom("ml_training_pipeline", worse_id, "register")
    assert reg2["promoted"] is False and "does not beat champion" in reg2["reason"]
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == champion.version

    better, better_id = _run(local_platform, "ml_training_pipeline", {"model": "logistic_regression"})
    assert better["state"] == "success"
    reg3 = client.xcom("ml_training_pipeline", better_id, "register")
    assert reg3["promoted"] is True and reg3["value"] > float(champion.tags.get("metric.accuracy", reg1["value"]))
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == reg3["version"]


def test_selfcheck_passes_and_fails_naming_aws_without_credentials(local_platform):
    client = local_platform.client()
    run, run_id = _run(local_platform, "platform_selfcheck")
    assert run["state"] == "success"
    report = client.xcom("platform_selfcheck", run_id, "selfcheck")
    assert report["ok"] and report["bundle_version"] == run["bundle_version"]
    assert {"aws_identity", "s3_write_read", "mlflow", "metadata_db", "bundle_version"} <= set(report["checks"])

    creds = local_platform.layout.aws_credentials
    hidden = creds.with_name("credentials.hidden")
    creds.rename(hidden)
    try:
        run, run_id = _run(local_platform, "platform_selfcheck")
    finally:
        hidden.rename(creds)
    assert run["state"] == "failed"
    report = client.xcom("platform_selfcheck", run_id, "selfcheck", key="report")
    assert not report["ok"] and not report["checks"]["aws_identity"]["ok"]
    assert report["checks"]["mlflow"]["ok"], "only the AWS part is missing"
    assert "credential" in report["checks"]["aws_identity"]["detail"].lower()
