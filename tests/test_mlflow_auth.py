"""Issue 22: the local MLflow server had no authentication. Reproduced as user ``nobody``: an experiment and a
registered model created, and a pickle written into the bucket through MLflow's artifact proxy (with the
server's own S3 credentials), so any local user could replace the model serving loads.

Now the server (``local/mlflow_server.py``) always runs MLflow's basic-auth app: a request without the
platform's generated credential is refused (401) and writes nothing, the same request with it works,
MLflow's old default admin password is no login, and the password in the 0600 key file is the one the
server accepts, whatever its user database held. Real MLflow servers throughout (``serving_fixture``);
the last test runs against the session's real platform (PostgreSQL store, artifacts in its S3 endpoint).
"""

from __future__ import annotations

import pickle
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from serving_fixture import CLIENT_ENV, MLFLOW_PASSWORD, MlflowServer, auth_env, free_port

from airflow_gitops import contract, keystore
from airflow_gitops.checks.git import parse_env
from airflow_gitops.local import mlflow_store
from airflow_gitops.local.layout import Layout, dag_runtime_env

GOOD = (keystore.MLFLOW_USER, MLFLOW_PASSWORD)
LEGACY_DEFAULTS = [("admin", "password1234"), (keystore.MLFLOW_USER, "password1234")]
PICKLE = pickle.dumps({"i am": "a replaced model"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-auth")).start()
    yield srv
    srv.stop()


def _attack(uri: str, auth, name: str) -> dict[str, httpx.Response]:
    """What ``nobody`` did: an experiment, a registered model and a pickle through the artifact proxy."""
    with httpx.Client(base_url=uri, auth=auth, timeout=30) as c:
        return {
            "experiment": c.post("/api/2.0/mlflow/experiments/create", json={"name": name}),
            "registered model": c.post("/api/2.0/mlflow/registered-models/create", json={"name": name}),
            "artifact": c.put(f"/api/2.0/mlflow-artifacts/artifacts/0/{name}/artifacts/model.pkl", content=PICKLE),
            "user": c.post("/api/2.0/mlflow/users/create", json={"username": name, "password": "x" * 20}),
        }


def _exists(uri: str, name: str) -> dict[str, bool]:
    with httpx.Client(base_url=uri, auth=GOOD, timeout=30) as c:
        exp = c.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        model = c.get("/api/2.0/mlflow/registered-models/get", params={"name": name})
        user = c.get("/api/2.0/mlflow/users/get", params={"username": name})
    return {"experiment": exp.status_code == 200, "registered model": model.status_code == 200, "user": user.is_success}


@pytest.mark.parametrize("auth", [None, *LEGACY_DEFAULTS, (keystore.MLFLOW_USER, "not-the-password-0")])
def test_without_the_credential_nothing_is_created_nor_written(server, auth):
    name = "attack_" + uuid.uuid4().hex[:8]
    answers = _attack(server.uri, auth, name)
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 401), {
        k: r.text[:200] for k, r in answers.items()
    }
    assert answers["experiment"].headers["WWW-Authenticate"].startswith("Basic")
    assert _exists(server.uri, name) == {"experiment": False, "registered model": False, "user": False}
    assert not list(server.root.rglob("model.pkl")), "the pickle reached the artifact store"


def test_with_the_credential_the_same_requests_work(server):
    name = "owner_" + uuid.uuid4().hex[:8]
    answers = _attack(server.uri, GOOD, name)
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 200), {
        k: r.text[:200] for k, r in answers.items()
    }
    assert _exists(server.uri, name) == {"experiment": True, "registered model": True, "user": True}
    (written,) = server.root.rglob(f"{name}/artifacts/model.pkl")
    assert written.read_bytes() == PICKLE


def test_health_answers_without_a_login(server):
    """What `up` (components.py) and the template's selfcheck wait on."""
    assert httpx.get(f"{server.uri}/health", timeout=10).text.strip() == "OK"


def test_mlflows_own_client_sends_the_credential_from_the_environment(server, monkeypatch):
    """Tasks, serving and the CLI's checks get no code of ours: MLflow's client reads the contract's names."""
    from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    assert (MLFLOW_TRACKING_USERNAME.name, MLFLOW_TRACKING_PASSWORD.name) == contract.MLFLOW_CREDENTIAL_ENV
    for k in CLIENT_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(MlflowException, match="401|not authenticated|UNAUTHENTICATED"):
        MlflowClient(server.uri).search_experiments()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for k, v in CLIENT_ENV.items():
        monkeypatch.setenv(k, v)
    assert MlflowClient(server.uri).search_experiments() is not None


def test_the_key_file_is_the_password_the_server_accepts(tmp_path):
    """A user database that holds another password (a restored backup, a regenerated key file): the server
    sets the key file's before it answers; MLflow alone would keep the old one."""
    srv = MlflowServer(tmp_path / "m").start()
    srv.stop()
    new = "rotated-" + uuid.uuid4().hex
    srv.env.update(auth_env(srv.root, new))
    srv.start()
    try:
        with httpx.Client(base_url=srv.uri, timeout=30) as c:
            url = "/api/2.0/mlflow/experiments/search?max_results=1"
            assert c.get(url, auth=GOOD).status_code == 401
            assert c.get(url, auth=(keystore.MLFLOW_USER, new)).status_code == 200
    finally:
        srv.stop()
    log = (srv.root / "mlflow.log").read_text()
    assert new not in log and MLFLOW_PASSWORD not in log
    # The password hashes: 0600 whatever the umask (this test process's is not the platform's 077).
    assert stat.S_IMODE((srv.root / "basic_auth.db").stat().st_mode) == 0o600


def test_no_authentication_settings_no_server(tmp_path):
    """The server never runs open: without its settings it exits at once, naming them."""
    port = free_port()
    env = {k: v for k, v in MlflowServer(tmp_path).env.items() if not k.startswith("AIRFLOW_GITOPS_MLFLOW_AUTH")}
    env.pop(mlflow_store.AUTH_USER_ENV)
    cmd = [sys.executable, "-m", "airflow_gitops.local.mlflow_server", "127.0.0.1", str(port)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "does not start without authentication" in done.stderr and mlflow_store.AUTH_DIR_ENV in done.stderr
    assert "Traceback" not in done.stderr


def test_a_planted_user_database_is_refused(tmp_path):
    """Another user's file or a link in its place would hold (or redirect) the users MLflow trusts."""
    srv = MlflowServer(tmp_path / "m")
    elsewhere = tmp_path / "elsewhere.db"
    (srv.root / "basic_auth.db").symlink_to(elsewhere)
    cmd = [sys.executable, "-m", "airflow_gitops.local.mlflow_server", "127.0.0.1", str(srv.port)]
    done = subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "symbolic link" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not elsewhere.exists()


def test_the_platform_hands_out_the_credential_only_where_mlflow_is_used(tmp_path):
    from conftest import make_spec

    spec = make_spec(tmp_path)
    lay = Layout(spec)
    env = dag_runtime_env(lay)  # tasks, serving, verify's serving rows
    path = spec.secrets_dir / keystore.MLFLOW_PASSWORD
    password = keystore.read_private(path).decode().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(password) >= 32
    assert env[contract.MLFLOW_USERNAME_ENV] == keystore.MLFLOW_USER and env[contract.MLFLOW_PASSWORD_ENV] == password
    assert dag_runtime_env(lay)[contract.MLFLOW_PASSWORD_ENV] == password, "generated once"
    # The MLflow server's env file names the key files, never the values.
    server = mlflow_store.auth_env(lay)
    assert password not in str(server) and keystore.mlflow_flask_secret_key(spec) not in str(server)
    # DAG files parsed on the operator's machine (`dag check`) get no credential.
    assert not set(contract.MLFLOW_CREDENTIAL_ENV) & set(parse_env(spec, tmp_path / "h", tmp_path / "d"))
    # An external MLflow (the user's own server): no credential of ours.
    external = make_spec(tmp_path / "ext", {"mlflow": {"tracking_uri": "http://mlflow.example:5000"}})
    assert not set(contract.MLFLOW_CREDENTIAL_ENV) & set(dag_runtime_env(Layout(external)))


@pytest.mark.platform
def test_the_platforms_mlflow_refuses_the_attack_and_keeps_the_bucket_clean(local_platform):
    """The session's real platform: PostgreSQL store, artifacts proxied into its S3 endpoint."""
    lay = local_platform.layout
    name = "attack_" + uuid.uuid4().hex[:8]
    answers = _attack(lay.mlflow_url, None, name)
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 401)
    s3 = mlflow_store._s3(lay)
    listed = s3.list_objects_v2(Bucket=lay.spec.aws.bucket, Prefix=f"{mlflow_store.ARTIFACT_PREFIX}/0/{name}/")
    assert not listed.get("Contents"), "the pickle reached the bucket"
    env = dag_runtime_env(lay)
    own = (env[contract.MLFLOW_USERNAME_ENV], env[contract.MLFLOW_PASSWORD_ENV])
    for legacy in LEGACY_DEFAULTS:
        r = httpx.get(f"{lay.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", auth=legacy, timeout=30)
        assert r.status_code == 401, legacy
    r = httpx.post(f"{lay.mlflow_url}/api/2.0/mlflow/experiments/create", json={"name": name}, auth=own, timeout=30)
    assert r.status_code == 200, r.text[:300]
    # The password is in neither the server's argv nor the environment it was started with (only paths).
    (server,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "airflow_gitops.local.mlflow_server" in (p.info["cmdline"] or [])
        and str(lay.ports.mlflow) in p.info["cmdline"]
    ]
    started_with = Path(f"/proc/{server.pid}/environ").read_bytes().decode(errors="replace")
    assert own[1] not in " ".join(server.cmdline()) and own[1] not in started_with
    assert str(lay.secrets / keystore.MLFLOW_PASSWORD) in started_with


@pytest.mark.platform
def test_up_and_status_say_where_mlflows_login_is_and_it_logs_in(local_platform):
    """A user opening MLflow's UI is asked for a login: `up` and `status` name the user and the 0600 file."""
    import io

    from rich.console import Console

    from airflow_gitops.local.report import print_access

    buf = io.StringIO()
    print_access(local_platform.status(), Console(file=buf, width=400))
    (line,) = [ln for ln in buf.getvalue().splitlines() if ln.strip().startswith("MLflow login")]
    user, _, path = line.split("MLflow login", 1)[1].strip().partition(" / password in ")
    password = Path(path).read_text().strip()
    lay = local_platform.layout
    r = httpx.get(
        f"{lay.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", auth=(user, password), timeout=30
    )
    assert r.status_code == 200, r.text[:300]
    assert password not in buf.getvalue()
