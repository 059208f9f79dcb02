"""The local platform, end to end, with real parts: PostgreSQL, git, Airflow 3, MLflow, the S3 endpoint."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import uuid

import psycopg2
import pytest
from conftest import DagRepo, quiet_console, tiny_dag, wait_for

from airflow_gitops import keystore
from airflow_gitops.dag_repo import DAG_IDS

pytestmark = pytest.mark.platform  # starts a real local platform

PREFIX = "t_" + uuid.uuid4().hex[:6]


def test_example_dags_are_listed_and_parsed_commit_is_branch_head(local_platform):
    client = local_platform.client()
    assert set(DAG_IDS) <= wait_for(lambda: client.dag_ids() >= set(DAG_IDS) and client.dag_ids(), 60, "example DAGs")
    report = local_platform.status()
    assert report.healthy, report.components
    assert report.branch_head and report.parsed_commit == report.branch_head
    # DAGs are unpaused at creation, as in the seed.
    dags = {d["dag_id"]: d for d in client.list_dags()}
    assert not dags["platform_selfcheck"]["is_paused"]


def test_pushed_dag_appears_and_its_run_records_the_commit(local_platform, tmp_path):
    repo = DagRepo(local_platform.spec.dag_repo_url, tmp_path / "work")
    dag_id = f"{PREFIX}_pushed"
    sha = repo.push({f"dags/{dag_id}.py": tiny_dag(dag_id)}, f"add {dag_id}")
    client = local_platform.client()
    wait_for(lambda: dag_id in client.dag_ids(), 90, f"{dag_id} to be listed")
    run_id = client.trigger(dag_id)
    run = client.wait_run(dag_id, run_id, timeout=180)
    assert run["state"] == "success"
    assert run["bundle_version"] == sha
    assert client.xcom(dag_id, run_id, "hello") == dag_id


def test_broken_dag_is_reported_and_other_dags_keep_running(local_platform, tmp_path):
    repo = DagRepo(local_platform.spec.dag_repo_url, tmp_path / "work")
    good = f"{PREFIX}_still_good"
    broken_file = f"{PREFIX}_broken.py"
    sha = repo.push(
        {f"dags/{good}.py": tiny_dag(good), f"dags/{broken_file}": "from airflow.sdk import dag\ndef broken(:\n"},
        "a good DAG and a broken one",
    )
    client = local_platform.client()
    errors = wait_for(
        lambda: [e for e in client.import_errors() if e["filename"].endswith(broken_file)], 90, "the import error"
    )
    assert "SyntaxError" in errors[0]["stack_trace"]
    wait_for(lambda: good in client.dag_ids(), 90, f"{good} to be listed")
    run_id = client.trigger(good)
    run = client.wait_run(good, run_id, timeout=180)
    assert run["state"] == "success" and run["bundle_version"] == sha
    # Remove the broken file again so later tests see a clean repository.
    repo.push({f"dags/{broken_file}": None}, "remove the broken DAG")
    wait_for(lambda: not [e for e in client.import_errors() if e["filename"].endswith(broken_file)], 90, "error gone")


def test_second_up_is_a_noop(local_platform):
    pids = {n: c.pid for n, c in local_platform.status().components.items()}
    console = quiet_console()
    local_platform.up(console)
    assert "Already up" in console.export_text()
    assert {n: c.pid for n, c in local_platform.status().components.items()} == pids


def test_keys_are_private_and_never_in_logs(local_platform):
    sdir = local_platform.layout.secrets
    files = [f for f in sdir.iterdir() if f.is_file()]
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(local_platform.supervisor.conf.stat().st_mode) == 0o600
    values = keystore.all_secret_values(local_platform.spec)
    assert values
    for log in local_platform.layout.logs.glob("*.log"):
        text = log.read_text(errors="ignore")
        for v in values:
            assert v not in text, f"a secret value appears in {log}"
    # supervisord.conf carries no secret either: they live in the 0600 env file.
    conf = local_platform.supervisor.conf.read_text()
    assert not [v for v in values if v in conf]


def _airflow(platform, *args: str) -> subprocess.CompletedProcess:
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    env = {**os.environ, **platform.airflow_env()}
    return subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=120)


def _log_mlflow_artifact(platform, tmp_path) -> tuple[str, str]:
    import mlflow

    mlflow.set_tracking_uri(platform.layout.mlflow_url)
    mlflow.set_experiment(f"{PREFIX}-restart")
    text = uuid.uuid4().hex
    (tmp_path / "note.txt").write_text(text)
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    return run.info.run_id, text


def _s3(platform):
    """An S3 client with the platform's own AWS files, whatever the environment says."""
    import boto3
    import botocore.session

    lay = platform.layout
    core = botocore.session.Session(profile=platform.spec.aws.profile)
    core.set_config_variable("credentials_file", str(lay.aws_credentials))
    core.set_config_variable("config_file", str(lay.aws_config))
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=lay.s3_url)


def test_down_up_keeps_history_encrypted_connection_mlflow_and_s3_objects(local_platform, tmp_path):
    client = local_platform.client()
    secret_value = "p@ss:/word-" + uuid.uuid4().hex
    conn_id = f"{PREFIX}_conn"
    client.request(
        "POST",
        "/api/v2/connections",
        json={"connection_id": conn_id, "conn_type": "generic", "host": "db.example", "password": secret_value},
    )
    # Stored encrypted with the platform's Fernet key, not in clear.
    with psycopg2.connect(local_platform.database_url().replace("+psycopg2", "")) as db, db.cursor() as cur:
        cur.execute("SELECT password, is_encrypted FROM connection WHERE conn_id = %s", (conn_id,))
        stored, is_encrypted = cur.fetchone()
    assert is_encrypted and secret_value not in stored
    run_id = client.trigger("platform_selfcheck")
    client.wait_run("platform_selfcheck", run_id, timeout=180)
    mlflow_run, artifact_text = _log_mlflow_artifact(local_platform, tmp_path)
    # An S3 object written with the platform's own AWS files (what DAG code uses), multipart included.
    s3 = _s3(local_platform)
    bucket, key = local_platform.spec.aws.bucket, f"{PREFIX}/survives.bin"
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    body = os.urandom(12 * 1024 * 1024)  # > 8 MiB: boto3's upload_fileobj goes multipart
    s3.upload_fileobj(io.BytesIO(body), bucket, key)
    assert any(k.startswith("S3 objects") for k in local_platform.status().persistence["survives down/up"])

    local_platform.down(quiet_console())
    assert not local_platform.supervisor.running()
    local_platform.up(quiet_console())

    client = local_platform.client()
    assert run_id in {r["dag_run_id"] for r in client.dag_runs("platform_selfcheck")}
    got = _airflow(local_platform, "connections", "get", conn_id, "-o", "json")
    assert got.returncode == 0, got.stderr[-2000:]
    assert json.loads(got.stdout)[0]["password"] == secret_value
    # MLflow runs and artifacts are on disk in the state dir, not in the (in-memory) S3 endpoint.
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=mlflow_run, artifact_path="note.txt", dst_path=str(tmp_path / "d")
    )
    assert open(path).read() == artifact_text
    # S3 objects are files under STATE_DIR/s3: they survive too.
    assert _s3(local_platform).get_object(Bucket=bucket, Key=key)["Body"].read() == body


def test_every_listening_socket_is_on_loopback(local_platform):
    import psutil

    listening = []
    for name, comp in local_platform.status().components.items():
        root = psutil.Process(comp.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            listening += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    assert {n for n, _, _ in listening} >= {"postgres", "s3", "mlflow", "api-server"}
    assert [sock for sock in listening if sock[1] != "127.0.0.1"] == []


ENV_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     tags=["test"], default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def environment():
        import os
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read().replace(b"\\0", b"\\n").decode(errors="replace")  # NUL-separated; JSON-safe
        return {{"environ": dict(os.environ), "proc": raw}}
    environment()

_d()
"""


def _run_one_task(platform, dag_id: str, task_id: str):
    """Once ``dag_id`` (just pushed) is listed: trigger it, wait for success, return (client, the task's XCom)."""
    client = platform.client()
    wait_for(lambda: dag_id in client.dag_ids(), 90, f"{dag_id} to be listed")
    run_id = client.trigger(dag_id)
    state = client.wait_run(dag_id, run_id, timeout=180)["state"]
    assert state == "success", client.task_log(dag_id, run_id, task_id)[-3000:]
    return client, client.xcom(dag_id, run_id, task_id)


def test_a_task_process_sees_no_platform_secret_in_its_environment(local_platform, tmp_path):
    """Fernet key, JWT secret, API secret and the database URL reach Airflow through AIRFLOW_HOME/airflow.cfg
    (0600), so a task process (forked from the scheduler's executor) has none of them in its environment."""
    repo = DagRepo(local_platform.spec.dag_repo_url, tmp_path / "work")
    dag_id = f"{PREFIX}_env"
    repo.push({f"dags/{dag_id}.py": ENV_DAG.format(dag_id=dag_id)}, f"add {dag_id}")
    seen = _run_one_task(local_platform, dag_id, "environment")[1]
    text = json.dumps(seen["environ"]) + seen["proc"]
    # The one secret a task is given on purpose: MLflow's login (tasks log runs and register models); the
    # platform's own keys and passwords are not.
    mlflow_password = keystore.mlflow_password(local_platform.spec)
    assert seen["environ"].get("MLFLOW_TRACKING_PASSWORD") == mlflow_password
    others = [v for v in keystore.all_secret_values(local_platform.spec) if v != mlflow_password]
    leaked = [v[:4] + "..." for v in others if v in text]
    assert leaked == [], "platform secrets in a task's environment"
    for name in ("FERNET_KEY", "JWT_SECRET", "API__SECRET_KEY"):
        assert not [k for k in seen["environ"] if k.endswith(name)], name
    # Airflow's task runner sets [database] sql_alchemy_conn itself, to a URL that refuses connections:
    # a task talks to the Execution API, never to the database. It is not ours (checked by value above).
    ours = local_platform.database_url()
    assert not [k for k, v in seen["environ"].items() if k.endswith("SQL_ALCHEMY_CONN") and v == ours]
    # What a task does get: the runtime contract (no secret values, only where the AWS files are).
    assert seen["environ"]["MLOPS_DATA_BUCKET"] == local_platform.spec.aws.bucket


def test_a_legacy_mlflow_store_was_carried_over_to_postgresql_and_s3(local_platform, tmp_path):
    """The session platform started on a state dir with MLflow's old SQLite store and on-disk artifacts."""
    import mlflow
    from mlflow import MlflowClient

    legacy = local_platform.legacy_mlflow
    lay = local_platform.layout
    client = MlflowClient(lay.mlflow_url)
    run = client.get_run(legacy["run_id"])
    assert run.data.metrics["legacy_metric"] == 0.75
    assert client.get_model_version_by_alias(legacy["model"], "champion").version == legacy["version"]
    path = mlflow.artifacts.download_artifacts(
        run_id=legacy["run_id"], artifact_path="legacy.txt", dst_path=str(tmp_path), tracking_uri=lay.mlflow_url
    )
    assert open(path).read() == legacy["text"]
    # The old files are kept aside, not used: the store is PostgreSQL, the artifact is in S3.
    assert (lay.mlflow / "mlflow.db.migrated").exists() and not (lay.mlflow / "mlflow.db").exists()
    assert (lay.mlflow / "artifacts.migrated").is_dir() and not (lay.mlflow / "artifacts").exists()
    keys = [o["Key"] for o in _s3(local_platform).list_objects_v2(Bucket=local_platform.spec.aws.bucket)["Contents"]]
    assert [k for k in keys if k.startswith("mlflow-artifacts/") and k.endswith("legacy.txt")], keys
    # New runs get ids after the carried-over ones (PostgreSQL's sequences were moved on).
    exp = client.create_experiment(f"{PREFIX}-after-migration")
    assert int(exp) > int(run.info.experiment_id)


def test_run_of_an_unknown_dag_fails_naming_it_once_the_head_is_parsed(local_platform):
    """`run` right after `up` or a push waits for the head to be parsed; a DAG the head does not have
    fails with one message after a short settle, not after the whole wait."""
    import time

    from airflow_gitops.errors import PlatformError
    from airflow_gitops.local.run import WAIT_MAX_S, run_dag

    started = time.monotonic()
    with pytest.raises(PlatformError, match="'no_such_dag_xyz' is not known to Airflow"):
        run_dag(local_platform, "no_such_dag_xyz", None, 60, quiet_console())
    assert time.monotonic() - started < WAIT_MAX_S / 2


AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def _restart(platform, names) -> None:
    for name in names:
        platform.supervisor.stop(name)
        platform.supervisor.start(name)
    wait_for(lambda: platform.status().healthy, 180, "every component healthy again")


def test_airflow_components_are_forks_of_the_fork_server_and_run_without_it(local_platform):
    """Airflow's four components run in forks of the process that imported Airflow once; supervisord's
    process for each is a small launcher that imported none of it. Without the fork server they start
    as before, each importing Airflow itself, and say so in their log."""
    import psutil

    plat = local_platform
    states = plat.supervisor.states()
    pids = plat.component_pids(states)
    server = psutil.Process(states["forkserver"]["pid"])
    for name in AIRFLOW_COMPONENTS:
        launcher = psutil.Process(states[name]["pid"])
        assert pids[name] != launcher.pid and psutil.Process(pids[name]).ppid() == server.pid, name
        # It stands in for the component and imported none of Airflow (a process that did holds > 150 MiB).
        assert launcher.memory_info().rss < 50 * 2**20, (name, launcher.memory_info().rss)
    assert "imported 8 modules" in plat.supervisor.log_of("forkserver").read_text()
    # status shows the process that runs each component (what a user would `kill` or `top`).
    assert {n: c.pid for n, c in plat.status().components.items() if n in AIRFLOW_COMPONENTS} == {
        n: pids[n] for n in AIRFLOW_COMPONENTS
    }

    plat.supervisor.stop("forkserver")  # its forks stop with it; supervisord restarts their launchers
    try:
        wait_for(lambda: _all_unforked(plat), 240, "the components to run unforked")
        wait_for(lambda: all(plat.component_health()[n] for n in AIRFLOW_COMPONENTS), 240, "Airflow healthy without it")
        log = plat.supervisor.log_of("triggerer").read_text(errors="replace")
        assert "no fork server answers" in log and "starting triggerer in this process" in log
    finally:
        plat.supervisor.start("forkserver")
        _restart(plat, AIRFLOW_COMPONENTS)
    states = plat.supervisor.states()
    pids = plat.component_pids(states)
    assert all(pids[n] != states[n]["pid"] for n in AIRFLOW_COMPONENTS), "forked again after a restart"


def _all_unforked(plat) -> bool:
    states = plat.supervisor.states()
    if any(states[n]["statename"] != "RUNNING" for n in AIRFLOW_COMPONENTS):
        return False
    pids = plat.component_pids(states)
    return all(pids[n] == states[n]["pid"] for n in AIRFLOW_COMPONENTS)


BOUNDARY_DAG = """
import os
from datetime import datetime
from airflow.sdk import dag, task

PARSED_BY = os.getuid()  # top-level code: runs while the DAG processor parses the file, and in each task

@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
     tags=["test", f"parsed-by-{{PARSED_BY}}"], default_args={{"owner": "tests", "retries": 0}})
def _d():
    @task
    def probe():
        import json, signal
        from airflow.configuration import conf
        seen = {{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "parsed_by": PARSED_BY, "home": os.environ.get("HOME"),
                "sql_alchemy_conn": conf.get("database", "sql_alchemy_conn", fallback=""),
                "fernet_key": conf.get("core", "fernet_key", fallback=""),
                "jwt_secret": conf.get("api_auth", "jwt_secret", fallback="")}}
        targets = json.loads({targets!r})
        targets["write"]["own_dag_file"] = __file__  # the bundle version this task runs from
        seen["own_dag_file_path"] = __file__
        for label, path in targets["read"].items():
            try:
                with open(path, "rb") as fh:
                    fh.read(1)
                seen[label] = "read"
            except OSError as err:
                seen[label] = type(err).__name__
        for label, path in targets["write"].items():
            try:
                with open(path, "a") as fh:
                    fh.write("")
                seen[label] = "written"
            except OSError as err:
                seen[label] = type(err).__name__
        for label, pid in targets["signal"].items():
            try:
                os.kill(pid, 0)  # signal 0: only asks whether it may
                seen[label] = "may signal"
            except OSError as err:
                seen[label] = type(err).__name__
        return seen
    probe()

_d()
"""


@pytest.fixture
def task_user_platform(tmp_path_factory):
    """A platform with local.task_user: auto (opt-in for now; the session platform runs DAG code as root)."""
    from conftest import cleanup_platform, make_spec

    from airflow_gitops.local.platform import LocalTarget

    platform = LocalTarget(make_spec(tmp_path_factory.mktemp("tasks-platform"), {"local": {"task_user": "auto"}}))
    try:
        platform.up(quiet_console())
        yield platform
    finally:
        cleanup_platform(platform)


@pytest.mark.skipif(os.geteuid() != 0, reason="DAG code runs as another user only when `up` runs as root")
def test_as_root_dag_code_runs_as_the_task_user_and_cannot_reach_the_platforms_keys(task_user_platform, tmp_path):
    """Issue 22: a task (and the DAG file's top level, while it is parsed) runs as local.task_user, in a
    process that never held the configuration: it cannot read airflow.cfg, the secrets, the database files
    or the component logs, cannot change the bundle it runs from, cannot signal the platform's processes,
    and Airflow's configuration in its memory has none of the platform's keys."""
    import pwd

    import psutil

    from airflow_gitops.local import task_user

    lay = task_user_platform.layout
    why = task_user.problem(lay, task_user.resolve(lay))
    if why is not None:  # e.g. a checkout under /root: `up` then says it runs DAG code as root
        pytest.skip(f"the task user cannot run DAG code from this checkout, so `up` runs it as root: {why.problem}")
    user = pwd.getpwnam(task_user.DEFAULT_USER)
    status = task_user_platform.status().components
    scheduler, zygote = status["scheduler"].pid, status["task-zygote"].pid
    assert psutil.Process(zygote).uids().real == user.pw_uid  # the zygote itself, from its first instruction
    repo = DagRepo(task_user_platform.spec.dag_repo_url, tmp_path / "work")
    dag_id = f"{PREFIX}_boundary"
    commit_before = task_user_platform.parsed_commit()
    version_dir = lay.bundles / "dags" / "versions" / (commit_before or "x")
    targets = {
        "read": {
            "airflow_cfg": str(lay.airflow_home / "airflow.cfg"),
            "fernet_file": str(lay.secrets / "fernet.key"),
            "env_file": str(task_user_platform.env_file),
            "scheduler_log": str(lay.logs / "scheduler.log"),
            "s3_credentials": str(lay.aws_credentials),
            "scheduler_environ": f"/proc/{scheduler}/environ",
            "scheduler_mem": f"/proc/{scheduler}/mem",
            "its_aws_copy": task_user.task_aws_files(lay)[0],  # what it should read
        },
        "write": {
            "bundle_file": str(lay.bundles / "dags" / "tracking_repo" / "dags" / "ml_pipeline.py"),
            "bare_config": str(lay.bundles / "dags" / "bare" / "config"),
            "lock_file": str(lay.bundles / "_locks" / "dags.lock"),
            "version_file": str(version_dir / "dags" / "ml_pipeline.py"),
            "its_home": str(lay.task_home / "scratch"),  # what it may write
        },
        "signal": {"scheduler": scheduler, "api_server": status["api-server"].pid},
    }
    repo.push({f"dags/{dag_id}.py": BOUNDARY_DAG.format(dag_id=dag_id, targets=json.dumps(targets))}, f"add {dag_id}")
    client, seen = _run_one_task(task_user_platform, dag_id, "probe")
    assert (seen["uid"], seen["euid"], seen["gid"]) == (user.pw_uid, user.pw_uid, user.pw_gid)
    assert seen["groups"] in ([], [user.pw_gid])
    assert seen["parsed_by"] == user.pw_uid  # the task's own parse
    [dag] = [d for d in client.list_dags() if d["dag_id"] == dag_id]
    assert f"parsed-by-{user.pw_uid}" in {t["name"] for t in dag["tags"]}  # the DAG processor's parse
    assert seen["home"] == str(lay.task_home)
    for label in ("airflow_cfg", "fernet_file", "env_file", "scheduler_log", "s3_credentials"):
        assert seen[label] == "PermissionError", (label, seen[label])
    assert seen["scheduler_environ"] in ("PermissionError", "FileNotFoundError"), seen["scheduler_environ"]
    assert seen["scheduler_mem"] in ("PermissionError", "FileNotFoundError"), seen["scheduler_mem"]
    assert seen["its_aws_copy"] == "read"
    assert seen["own_dag_file_path"].startswith(str(lay.bundles / "dags" / "versions")) and seen["own_dag_file"] == (
        "PermissionError"
    )
    for label in ("bundle_file", "bare_config", "lock_file", "version_file"):
        assert seen[label] in ("PermissionError", "FileNotFoundError"), (label, seen[label])
    assert seen["its_home"] == "written"
    assert seen["scheduler"] == "PermissionError" and seen["api_server"] == "PermissionError"
    # Airflow's configuration as the task sees it holds none of the platform's keys.
    assert keystore.fernet_key(task_user_platform.spec) not in json.dumps(seen)
    assert keystore.jwt_secret(task_user_platform.spec) not in json.dumps(seen)
    assert task_user_platform.database_url() not in json.dumps(seen)
    # Nobody else may enter what the task user may pass.
    for folder in (lay.root, lay.airflow_home, lay.bundles, lay.tasks):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o007 == 0, folder
