"""Crashes, with real processes: any one component SIGKILLed while a DAG run is in flight; the
scheduler's children after a ``kill -9`` of the scheduler; a killed supervisord; a power cut.

Its own platform (it kills things), started once for the module. The probe DAG runs a task that sleeps
15 s in a LocalExecutor worker and, beside it, a task deferred 15 s on the triggerer, so every kill
hits both kinds of work in flight. docs/recovery.md explains the settings that make this fast.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime

import httpx
import psutil
import pytest
from conftest import DagRepo, cleanup_platform, make_spec, mlflow_login, quiet_console, wait_for

from airflow_gitops import fernetkeys
from airflow_gitops.local.platform import LocalTarget

pytestmark = pytest.mark.platform  # starts a real local platform

RECOVERY_BUDGET = 60.0  # kill -> the run in flight succeeded, and every component healthy again
# Restarting a component is CPU-bound (the API server needs ~6-7 CPU-seconds of imports before it
# answers), so on a machine busier than this many runnable processes per core the budget scales with
# the load; the figures printed and docs/recovery.md carry the load they were measured under.
LOAD_PER_CORE_OF_BUDGET = 3.0


def budget(*loads: float) -> float:
    per_core = max(loads) / (os.cpu_count() or 1)
    return RECOVERY_BUDGET * max(1.0, per_core / LOAD_PER_CORE_OF_BUDGET)


PROBE = "t_crash_probe_" + uuid.uuid4().hex[:6]
PROBE_DAG = f'''
from datetime import datetime, timedelta, timezone
import time

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, dag, task


class Deferred(BaseOperator):
    """Waits on the triggerer (not in a worker)."""

    def execute(self, context):
        moment = datetime.now(timezone.utc) + timedelta(seconds=15)
        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="resume")

    def resume(self, context, event=None):
        return "resumed"


@dag(dag_id="{PROBE}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["test"],
     default_args={{"owner": "tests", "retries": 2, "retry_delay": timedelta(seconds=10)}})
def _d():
    @task
    def work():
        time.sleep(15)
        return "worked"

    work()
    Deferred(task_id="wait")

_d()
'''
# Health keys of Airflow's jobs in /api/v2/monitor/health.
JOBS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _ours(platform: LocalTarget) -> list:
    return platform.leftovers()


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> LocalTarget:
    base = tmp_path_factory.mktemp("crash")
    p = LocalTarget(make_spec(base))
    try:
        p.up(quiet_console())
        repo = DagRepo(p.spec.dag_repo_url, base / "work")
        repo.push({f"dags/{PROBE}.py": PROBE_DAG}, f"add {PROBE}")
        client = p.client()
        wait_for(lambda: PROBE in client.dag_ids(), 120, f"{PROBE} to be listed")
        with mlflow_login(p.layout):  # the MLflow clients here log in as the platform's tasks do
            yield p
    finally:
        cleanup_platform(p)
        left = _ours(p)
        assert not left, f"`down` left processes of the platform running: {[str(x) for x in left]}"


def _heartbeats(platform: LocalTarget) -> dict[str, float]:
    """Job name -> its latest heartbeat (epoch seconds), from the API server's health endpoint."""
    try:
        health = platform.client().health()
    except Exception:
        return {}
    out = {}
    for name, key in JOBS.items():
        stamp = (health.get(key) or {}).get(f"latest_{key}_heartbeat")
        if stamp and health[key].get("status") == "healthy":
            out[name] = datetime.fromisoformat(stamp).timestamp()
    return out


def _recovered(platform: LocalTarget, name: str, old_pid: int, killed_at: float) -> bool:
    """The killed component runs again (a new process) and every component answers; Airflow's jobs
    count only with a heartbeat written after the kill (the health endpoint reports a dead job
    healthy until its last heartbeat is older than the threshold)."""
    state = platform.supervisor.states().get(name, {})
    if state.get("statename") != "RUNNING" or state.get("pid") in (None, 0, old_pid):
        return False
    if not all(platform.component_health().values()):
        return False
    fresh = _heartbeats(platform)
    must = list(JOBS) if name in ("postgres", "forkserver") else [name] if name in JOBS else []
    return all(fresh.get(job, 0) > killed_at for job in must)


def _kill(pid: int, with_children: bool) -> list[int]:
    procs = [psutil.Process(pid)]
    if with_children:
        procs += procs[0].children(recursive=True)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in procs]


def _tis(client, run_id: str) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in client.task_instances(PROBE, run_id)}


def _tries(client, run_id: str) -> str:
    return ", ".join(
        f"{t['task_id']} {t['state']} (try {t['try_number']})" for t in client.task_instances(PROBE, run_id)
    )


def _in_flight(client, run_id: str) -> bool:
    try:
        tis = _tis(client, run_id)
    except httpx.TransportError:  # one API worker on a busy machine: ask again
        return False
    return tis.get("work") == "running" and tis.get("wait") == "deferred"


def _wait_healthy(platform: LocalTarget, timeout: float = 240) -> None:
    wait_for(lambda: platform.status().healthy, timeout, "every component to be healthy")


# Cheap components first; the scheduler, the fork server (its loss takes all four of Airflow's
# components with it) and PostgreSQL (whose loss restarts more) last.
COMPONENTS = [
    "s3",
    "mlflow",
    "serving",
    "dag-processor",
    "triggerer",
    "api-server",
    "scheduler",
    "forkserver",
    "postgres",
]


@pytest.mark.parametrize("name", COMPONENTS)
def test_killed_component_recovers_and_the_run_in_flight_succeeds(platform, name):
    _wait_healthy(platform)
    client = platform.client()
    run_id = client.trigger(PROBE)
    wait_for(lambda: _in_flight(client, run_id), 120, "the probe's tasks to run and defer")
    pid = platform.supervisor.states()[name]["pid"]
    # The process that runs it (for Airflow's components, the fork behind supervisord's launcher).
    real = platform.component_pids()[name]
    killed_at, t0 = time.time(), time.monotonic()
    _kill(real, with_children=name == "scheduler")
    load_at_kill = os.getloadavg()[0]

    healthy_after = wait_for(
        lambda: _recovered(platform, name, pid, killed_at) and time.monotonic() - t0, 300, f"{name} to recover"
    )
    run = platform.client().wait_run(PROBE, run_id, timeout=300)
    done_after = time.monotonic() - t0
    tis = _tries(platform.client(), run_id)
    allowed = budget(load_at_kill, os.getloadavg()[0])
    print(
        f"\n[recovery] {name}: all healthy {healthy_after:.1f} s, run {run['state']} {done_after:.1f} s after "
        f"kill -9 (budget {allowed:.0f} s; load {load_at_kill:.1f} at kill, {load()} now); {tis}"
    )
    assert run["state"] == "success", tis
    assert healthy_after <= allowed, f"{name}: healthy only {healthy_after:.1f} s after the kill"
    assert done_after <= allowed, f"{name}: the run finished only {done_after:.1f} s after the kill"


def test_scheduler_children_die_with_it(platform):
    """LocalExecutor forks its workers up front; after kill -9 of the scheduler they must not linger."""
    _wait_healthy(platform)
    pid = platform.component_pids()["scheduler"]  # the scheduler itself (forked by the fork server)
    assert pid != platform.supervisor.states()["scheduler"]["pid"]
    workers = wait_for(lambda: psutil.Process(pid).children(recursive=True), 60, "the scheduler's workers")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def gone():
        return not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, 10, f"the scheduler's {len(workers)} worker(s) to exit", interval=0.1)
    print(f"\n[orphans] {len(workers)} scheduler worker(s) gone {time.monotonic() - t0:.2f} s after kill -9")
    # Every process of the platform is again one that supervisord runs, or a descendant of one.
    _wait_healthy(platform)
    supervised = psutil.Process(int(platform.supervisor.pidfile.read_text()))
    tree = {supervised.pid, *(p.pid for p in supervised.children(recursive=True))}
    assert [str(x) for x in _ours(platform) if x.pid not in tree] == []


def test_down_after_a_killed_supervisor_leaves_nothing_running(platform):
    """supervisord SIGKILLed: Airflow's processes die with it (parent-death signal); PostgreSQL, MLflow
    and the S3 endpoint are orphans that `down` finds and stops; `up` then starts cleanly."""
    _wait_healthy(platform)
    states = platform.supervisor.states()
    pids = platform.component_pids(states)
    # Airflow's components, the launchers supervisord runs for them, and the fork server.
    airflow_pids = [pid for n in ("api-server", *JOBS) for pid in (states[n]["pid"], pids[n])]
    airflow_pids.append(states["forkserver"]["pid"])
    os.kill(int(platform.supervisor.pidfile.read_text()), signal.SIGKILL)
    wait_for(lambda: not [p for p in airflow_pids if psutil.pid_exists(p)], 15, "Airflow's processes to exit")
    assert _ours(platform), "PostgreSQL, MLflow and S3 survive their supervisor: the sweep has work to do"

    console = quiet_console()
    platform.down(console)
    text = console.export_text()
    print(f"\n[down after supervisor crash]\n{text}")
    assert "killed pid" in text and "Stopped what was left" in text
    assert [str(x) for x in _ours(platform)] == []

    platform.up(quiet_console())
    wait_for(lambda: platform.status().healthy, 60, "every component healthy after up")


def _mlflow_state(platform: LocalTarget, tmp_path) -> dict:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(platform.layout.mlflow_url)
    mlflow.set_experiment("t-crash-power-cut")
    note = tmp_path / "note.txt"
    note.write_text(uuid.uuid4().hex)
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
        mlflow.log_artifact(str(note))
    client = MlflowClient(platform.layout.mlflow_url)
    model = "t_crash_model_" + uuid.uuid4().hex[:6]
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/note.txt", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "champion", version.version)
    return {"run": run.info.run_id, "text": note.read_text(), "model": model, "version": version.version}


def _secrets_in_db(platform: LocalTarget, conn_id: str, var_key: str) -> tuple[str, str]:
    """The Connection's password and the Variable's value as stored, decrypted with the platform's key."""
    import psycopg2
    from cryptography.fernet import Fernet, MultiFernet

    keys = MultiFernet([Fernet(k) for k in fernetkeys.read_keys(fernetkeys.key_file(platform.spec))])
    with psycopg2.connect(platform.database_url().replace("+psycopg2", "")) as db, db.cursor() as cur:
        cur.execute("SELECT password, is_encrypted FROM connection WHERE conn_id = %s", (conn_id,))
        password, conn_encrypted = cur.fetchone()
        cur.execute('SELECT val, is_encrypted FROM variable WHERE "key" = %s', (var_key,))
        value, var_encrypted = cur.fetchone()
    assert conn_encrypted and var_encrypted
    return keys.decrypt(password.encode()).decode(), keys.decrypt(value.encode()).decode()


def _s3_client(platform: LocalTarget, monkeypatch):
    import boto3

    layout = platform.layout
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(layout.aws_credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(layout.aws_config))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return boto3.Session(profile_name=platform.spec.aws.profile).client("s3", endpoint_url=layout.s3_url)


def test_power_cut_then_up_keeps_everything(platform, tmp_path, monkeypatch):
    """Every process of the platform SIGKILLed at the same moment (supervisord and all its children),
    a run in flight; `up` comes back healthy with runs, an encrypted Connection and Variable, an
    MLflow run + artifact and the registered model's alias; the interrupted run still succeeds."""
    _wait_healthy(platform)
    client = platform.client()
    tag = uuid.uuid4().hex[:6]
    secret, conn_id, var_key = "p@ss:/" + uuid.uuid4().hex, f"t_crash_conn_{tag}", f"t_crash_var_{tag}"
    client.request(
        "POST", "/api/v2/connections", json={"connection_id": conn_id, "conn_type": "generic", "password": secret}
    )
    client.request("POST", "/api/v2/variables", json={"key": var_key, "value": secret[::-1]})
    finished = client.trigger(PROBE)
    assert client.wait_run(PROBE, finished, timeout=300)["state"] == "success"
    runs_before = {r["dag_run_id"]: r["state"] for r in client.dag_runs(PROBE)}
    ml = _mlflow_state(platform, tmp_path)
    bucket, key, body = platform.spec.aws.bucket, f"t-crash/{tag}.txt", uuid.uuid4().bytes
    s3 = _s3_client(platform, monkeypatch)
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    in_flight = client.trigger(PROBE)
    wait_for(lambda: _in_flight(client, in_flight), 120, "a run in flight")

    supervisord = int(platform.supervisor.pidfile.read_text())
    victims = sorted((psutil.Process(x.pid) for x in _ours(platform)), key=lambda p: p.pid != supervisord)
    for proc in victims:  # one loop of kill(2) calls: every process gone within milliseconds
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    assert _ours(platform) == []
    assert platform.supervisor.pidfile.exists() and (platform.postgres.data_dir / "postmaster.pid").exists()

    t0 = time.monotonic()
    platform.up(quiet_console())
    up_took = time.monotonic() - t0
    # `up` returned once every component answered; under load a heartbeat-based probe can dip right
    # after (the scheduler's loop catching up): healthy again within the bound of 60 s.
    wait_for(lambda: platform.status().healthy, 60, "every component healthy after the power cut")
    client = platform.client()
    run = client.wait_run(PROBE, in_flight, timeout=300)
    print(
        f"\n[power cut] {len(victims)} processes SIGKILLed; `up` healthy in {up_took:.1f} s, the interrupted "
        f"run {run['state']} {time.monotonic() - t0:.1f} s after `up` began (load {load()})"
    )
    assert run["state"] == "success", _tis(client, in_flight)
    runs_after = {r["dag_run_id"]: r["state"] for r in client.dag_runs(PROBE)}
    assert {r: runs_after.get(r) for r in runs_before} == runs_before
    assert _secrets_in_db(platform, conn_id, var_key) == (secret, secret[::-1])

    import mlflow
    from mlflow import MlflowClient

    path = mlflow.artifacts.download_artifacts(run_id=ml["run"], artifact_path="note.txt", dst_path=str(tmp_path / "d"))
    assert open(path).read() == ml["text"]
    assert (
        MlflowClient(platform.layout.mlflow_url).get_model_version_by_alias(ml["model"], "champion").version
        == (ml["version"])
    )
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body  # the S3 endpoint is disk-backed
