"""The platform.yaml the Kubernetes-target tests render: an SSH DAG repository with a pinned host key,
an external database whose password needs URL-encoding, a remote MLflow and S3 endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_gitops.spec import PlatformSpec, parse_spec

KNOWN_HOSTS = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
DB_URL = "postgresql://airflow:p%40ss:w/rd@db.example.com:5432/airflow"


def platform(tmp: Path, *, delivery: str = "git-sync", **over) -> dict:
    """The spec data (writes ``known_hosts`` into ``tmp``); ``over`` updates whole sections."""
    (tmp / "known_hosts").write_text(KNOWN_HOSTS)
    data = {
        "dags": {
            "repo": "git@github.com:org/airflow-dags.git",
            "ssh_key_file": "deploy_key",
            "known_hosts_file": "known_hosts",
            "branch": "release",
            "sub_path": "pipelines/dags",
            "delivery": delivery,
        },
        "database": {"url": DB_URL},
        "mlflow": {"tracking_uri": "http://mlflow.mlflow.svc:5000"},
        "aws": {"region": "ap-northeast-2", "bucket": "mlops-data", "endpoint_url": "https://s3.example.com"},
        "ingress": {"host": "airflow.example.com"},
    }
    for k, v in over.items():
        data.setdefault(k, {}).update(v)
    return data


def spec_in(tmp: Path, **kw) -> PlatformSpec:
    return parse_spec(platform(tmp, **kw), base_dir=tmp)


REPO = Path(__file__).resolve().parents[1]
CHART_TGZ = "reference/airflow-helm-chart-1.21.0/airflow-1.21.0.tgz"


def shared_dir() -> Path:
    env = os.environ.get("AIRFLOW_GITOPS_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def shared_file(rel: str) -> Path:
    """A file of the shared/ folder; a skip with the reason printed, or a failure under CI (it has shared/)."""
    path = shared_dir() / rel
    if not path.is_file():
        reason = f"{path} not found: set AIRFLOW_GITOPS_SHARED to the shared/ folder"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path
