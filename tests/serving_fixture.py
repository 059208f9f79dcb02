"""A real MLflow tracking server (SQLite registry, artifacts served by it, webhooks on loopback allowed) and
the real serving process against it. Used by tests/test_serving.py and bench/bench_serving.py.

The server is the platform's (``local/mlflow_server.py``), so authentication is on: each one keeps its
users in its own folder, its user's password is generated here (0600 file), and the clients (this
process inside :func:`client_credentials`, the serving processes) send it with MLflow's env names."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from ports import free_port

from airflow_gitops import contract, keystore, serving
from airflow_gitops.local import mlflow_store
from airflow_gitops.local.environment import environ_overlay

# One password for every fixture server of this test process (each has its own user database).
MLFLOW_PASSWORD = secrets.token_urlsafe(32)
CLIENT_ENV = {contract.MLFLOW_USERNAME_ENV: keystore.MLFLOW_USER, contract.MLFLOW_PASSWORD_ENV: MLFLOW_PASSWORD}


@contextmanager
def client_credentials():
    """MLflow's clients in this process (``mlflow.*``, ``MlflowClient``, serving's checks) and the processes
    it starts send the fixture servers' credential."""
    with environ_overlay(CLIENT_ENV):
        yield


def auth_env(root: Path, password: str = MLFLOW_PASSWORD) -> dict[str, str]:
    """The server's authentication settings: its user database in ``root``, the secrets in 0600 files."""
    keystore.write_private(root / "secrets" / keystore.MLFLOW_PASSWORD, password + "\n")
    keystore.write_private(root / "secrets" / keystore.MLFLOW_FLASK_SECRET_KEY, secrets.token_urlsafe(32) + "\n")
    return {
        mlflow_store.AUTH_DIR_ENV: str(root),
        mlflow_store.AUTH_USER_ENV: keystore.MLFLOW_USER,
        mlflow_store.AUTH_PASSWORD_FILE_ENV: str(root / "secrets" / keystore.MLFLOW_PASSWORD),
        mlflow_store.AUTH_SECRET_KEY_FILE_ENV: str(root / "secrets" / keystore.MLFLOW_FLASK_SECRET_KEY),
    }


def wait_http(url: str, timeout: float, ok=(200,)) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code in ok:
                return r
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {ok} within {timeout:.0f} s (last: {last})")


class MlflowServer:
    """MLflow's server as the local target runs it (local/mlflow_server.py: the basic-auth app, the login
    of :data:`CLIENT_ENV`), on ``host`` (default loopback) and ``port`` (default a free one)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = None):
        from cryptography.fernet import Fernet

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port or free_port()
        self.uri = f"http://{host}:{self.port}"
        self.env = {
            **os.environ,
            "AIRFLOW_GITOPS_MLFLOW_STORE": f"sqlite:///{root / 'mlflow.db'}",
            "AIRFLOW_GITOPS_MLFLOW_ARTIFACTS": str(root / "artifacts"),
            # Webhooks to a loopback http:// endpoint (the local target sets the same).
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            **auth_env(root),
        }
        self.proc = None

    def start(self) -> MlflowServer:
        cmd = [sys.executable, "-m", "airflow_gitops.local.mlflow_server", self.host, str(self.port)]
        self.log = open(self.root / "mlflow.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=self.log, cwd=self.root)
        wait_http(f"{self.uri}/health", 120)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc:
            self.log.close()


MODEL_CODE = """
import mlflow.pyfunc
from mlflow.models import set_model

class Broken(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise RuntimeError("this version is broken on purpose")

set_model(Broken())
"""


def train(seed: int, n_estimators: int = 5):
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200), "n": rng.integers(0, 5, 200)})
    y = ((x["a"] + x["b"] * (seed % 3 - 1) + x["n"] * 0.1) > 0).astype(int)
    return RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1).fit(x, y), x


def log_version(
    uri: str,
    name: str,
    seed: int,
    *,
    alias: str | None = "champion",
    broken: bool = False,
    workdir: Path | None = None,
    n_estimators: int = 5,
) -> str:
    """Log and register one version (a real sklearn model, or a pyfunc that fails to predict); its number."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-tests")
    model, x = train(seed, n_estimators)
    sample = x.head(5)
    with mlflow.start_run(tags={"git.commit": f"c0ffee{seed:04d}"}) as run:
        if broken:
            code = (workdir or Path("/tmp")) / f"broken_{seed}.py"
            code.write_text(MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                signature=infer_signature(sample, model.predict(sample)),
                pip_requirements=[],
            )
        else:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(sample, model.predict(sample)),
                pip_requirements=[],
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            )
    client = MlflowClient(uri)
    mv = mlflow.register_model(info.model_uri, name, tags={"git.commit": f"c0ffee{seed:04d}"})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    _ = run
    return str(mv.version)


class ServingProcess:
    def __init__(
        self,
        root: Path,
        mlflow_uri: str,
        model: str,
        *,
        poll: float = 30,
        webhook: bool = True,
        max_body: int = 1_048_576,
        extra_env: dict | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.secret = secrets.token_urlsafe(32)
        secret_file = root / "webhook.secret"
        secret_file.write_text(self.secret)
        secret_file.chmod(0o600)
        self.env = {
            **os.environ,
            **CLIENT_ENV,
            "MLFLOW_TRACKING_URI": mlflow_uri,
            serving.ENV_MODEL: model,
            serving.ENV_POLL: str(poll),
            serving.ENV_MAX_BODY: str(max_body),
            **(extra_env or {}),
        }
        if webhook:
            self.env[serving.ENV_WEBHOOK_SECRET_FILE] = str(secret_file)
            self.env[serving.ENV_WEBHOOK_URL] = self.url + serving.WEBHOOK_PATH
            self.env[serving.ENV_WEBHOOK_NAME] = f"serving-{self.port}"
        self.proc = None

    def start(self) -> ServingProcess:
        cmd = [sys.executable, "-m", "airflow_gitops.serving", "127.0.0.1", str(self.port)]
        self.log_path = self.root / f"serving-{self.port}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=self.log)
        wait_http(f"{self.url}/health", 60, ok=(200, 503))
        return self

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()

    def wait_version(self, version: str, timeout: float = 30) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                r = httpx.get(f"{self.url}/health", timeout=2).json()
                if r.get("served_version") == version:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"serving did not serve v{version} within {timeout} s: {self.health()}")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()
