"""The local MLflow server's webhook environment for serving: on with serving, its key generated 0600 once."""

from __future__ import annotations

import stat

from cryptography.fernet import Fernet

from airflow_gitops import keystore
from airflow_gitops.local.layout import Layout
from airflow_gitops.local.mlflow_store import webhook_env
from airflow_gitops.spec import parse_spec


def test_webhook_env_with_serving_and_a_private_generated_key(tmp_path):
    spec = parse_spec({}, base_dir=tmp_path)
    env = webhook_env(Layout(spec))
    assert env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert int(env["MLFLOW_WEBHOOK_CACHE_TTL"]) <= 5
    key_file = spec.secrets_dir / keystore.MLFLOW_WEBHOOK_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    Fernet(env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"].encode())  # a valid Fernet key, or this raises
    assert key_file.read_text().strip() == env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    # Generated once: the webhooks MLflow stored stay decryptable across restarts.
    again = webhook_env(Layout(spec))
    assert again["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]


def test_no_webhook_env_when_serving_or_its_webhook_is_off(tmp_path):
    for serving in ({"enabled": False}, {"webhook": False}):
        spec = parse_spec({"serving": serving}, base_dir=tmp_path)
        assert webhook_env(Layout(spec)) == {}
    assert not (tmp_path / ".airflow-gitops").exists() or not any(
        (p.name == keystore.MLFLOW_WEBHOOK_KEY) for p in (tmp_path / ".airflow-gitops").rglob("*")
    )
