"""Data a user could still need survives an interrupted or repeated step (issue 22).

Real parts only: MLflow's own stores (``MlflowClient`` on a SQLite ``mlflow.db`` and on PostgreSQL),
the session's real PostgreSQL (``pg_server``), the real ``initdb``. The one stand-in is the crash in
``test_an_interrupted_carry_over_completes_on_the_next_up``: the process "dies" (an exception that is no
``Exception``) at the rename of ``mlflow.db``, after PostgreSQL has committed; it is named so there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import make_spec

from airflow_gitops.errors import PlatformError
from airflow_gitops.local import mlflow_store
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.local.postgres import LocalPostgres, binary


def _steps():
    said: list[str] = []
    return said, said.append


@pytest.fixture
def platform(pg_server, tmp_path) -> LocalTarget:
    """A platform whose PostgreSQL is the session's real server, with an empty ``mlflow`` database and
    role (what ``_postgres_ready`` leaves before MLflow's first start); no S3 needed (no artifacts)."""
    spec = make_spec(tmp_path, {"local": {"ports": {"postgres": pg_server.port}}})
    p = LocalTarget(spec)
    p.layout.mlflow.mkdir(parents=True, exist_ok=True)
    conn = pg_server.connect()  # an earlier test's MLflow engine may still hold connections
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'mlflow'")
    conn.close()
    pg_server.create_database(mlflow_store.DB_NAME, password=mlflow_store.db_password(p.layout))
    return p


def _sqlite_store(db: Path, experiment: str, n_runs: int) -> list[str]:
    """An ``mlflow.db`` written by MLflow itself: one experiment, ``n_runs`` runs with a metric each."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment(experiment)
    ids = []
    for i in range(n_runs):
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "m", float(i))
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def _pg_client(platform):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_store.store_uri(platform))


def _pg_run_ids(platform) -> set[str]:
    client = _pg_client(platform)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(exps, max_results=1000)}


class Killed(BaseException):
    """Stand-in for the process being killed (not an ``Exception``: nothing may catch it as an error)."""


def test_an_interrupted_carry_over_completes_on_the_next_up(platform, monkeypatch):
    lay = platform.layout
    db = mlflow_store.legacy_store(lay)
    runs = _sqlite_store(db, "old-experiment", 3)
    real_rename = Path.rename
    killed = []

    def dies_at_the_rename(self, target):
        if self == db:
            killed.append(self)
            raise Killed
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", dies_at_the_rename)
    with pytest.raises(Killed):
        mlflow_store.migrate_legacy(platform, _steps()[1])
    monkeypatch.undo()
    assert killed, "the crash was not simulated: the carry-over no longer renames mlflow.db with Path.rename"
    assert db.exists() and _pg_run_ids(platform) == set(runs)  # committed, not renamed: the crash's state

    said, step = _steps()
    mlflow_store.migrate_legacy(platform, step)  # the next `up`: finishes instead of refusing
    assert not db.exists() and db.with_name("mlflow.db.migrated").exists()
    assert _pg_run_ids(platform) == set(runs)  # nothing lost, nothing doubled
    assert _pg_client(platform).get_run(runs[2]).data.metrics["m"] == 2.0
    mlflow_store.migrate_legacy(platform, step)  # and once more: nothing left to do
    assert _pg_run_ids(platform) == set(runs)


@pytest.fixture
def s3(platform):
    """The platform's own S3 endpoint (rclone serving ``<state>/s3``, as the ``s3`` component runs it)."""
    from conftest import local_s3

    with local_s3(platform):
        yield mlflow_store._s3(platform.layout)


def test_an_up_that_stopped_before_the_artifact_upload_uploads_them_next_time(platform, s3, monkeypatch):
    """Killed after PostgreSQL's commit, before any artifact reached S3 (the stand-in: the upload
    function raises ``Killed``): the next carry-over uploads them and sets both old stores aside."""
    lay = platform.layout
    db = mlflow_store.legacy_store(lay)
    runs = _sqlite_store(db, "old-experiment", 1)
    artifact = lay.mlflow / "artifacts" / "1" / runs[0] / "artifacts" / "model.txt"
    artifact.parent.mkdir(parents=True)
    artifact.write_text("the only copy")
    real_upload = mlflow_store._upload_artifacts

    def killed(*args):
        raise Killed

    monkeypatch.setattr(mlflow_store, "_upload_artifacts", killed)
    with pytest.raises(Killed):
        mlflow_store.migrate_legacy(platform, _steps()[1])
    monkeypatch.setattr(mlflow_store, "_upload_artifacts", real_upload)
    assert db.exists() and artifact.exists() and _pg_run_ids(platform) == set(runs)

    mlflow_store.migrate_legacy(platform, _steps()[1])
    key = f"{mlflow_store.ARTIFACT_PREFIX}/1/{runs[0]}/artifacts/model.txt"
    body = s3.get_object(Bucket=lay.spec.aws.bucket, Key=key)["Body"].read()
    assert body == b"the only copy"
    assert (lay.mlflow / "artifacts.migrated").is_dir() and (lay.mlflow / "mlflow.db.migrated").exists()
    assert not db.exists() and _pg_run_ids(platform) == set(runs)


def test_the_same_store_restored_after_a_carry_over_is_recognised(platform):
    lay = platform.layout
    db = mlflow_store.legacy_store(lay)
    runs = _sqlite_store(db, "old-experiment", 2)
    mlflow_store.migrate_legacy(platform, _steps()[1])
    migrated = db.with_name("mlflow.db.migrated")
    new_run = _pg_client(platform).create_run("0").info.run_id  # used on PostgreSQL since
    migrated.rename(db)  # the user copies the very same file back
    mlflow_store.migrate_legacy(platform, _steps()[1])
    assert _pg_run_ids(platform) == {*runs, new_run}
    assert not db.exists() and migrated.exists()


def test_a_restored_store_never_wipes_postgresql_data_without_runs(platform):
    """PostgreSQL holds no run but a registered model and an experiment of the user's: carrying a
    restored mlflow.db over would delete them (every MLflow table is emptied before the copy)."""
    lay = platform.layout
    client = _pg_client(platform)
    client.create_experiment("made-on-postgresql")
    client.create_registered_model("model-on-postgresql")
    db = mlflow_store.legacy_store(lay)
    _sqlite_store(db, "old-experiment", 1)
    with pytest.raises(PlatformError) as err:
        mlflow_store.migrate_legacy(platform, _steps()[1])
    text = err.value.render()
    assert str(db) in text and "PostgreSQL" in text and "Fix:" in text, text
    assert client.get_registered_model("model-on-postgresql").name == "model-on-postgresql"
    assert client.get_experiment_by_name("made-on-postgresql") is not None
    assert db.exists()  # the restored file is kept where the user put it


def test_a_restored_store_next_to_postgresql_runs_is_refused_naming_both(platform):
    lay = platform.layout
    client = _pg_client(platform)
    pg_run = client.create_run("0").info.run_id
    db = mlflow_store.legacy_store(lay)
    old = _sqlite_store(db, "old-experiment", 1)
    with pytest.raises(PlatformError) as err:
        mlflow_store.migrate_legacy(platform, _steps()[1])
    text = err.value.render()
    assert str(db) in text and "PostgreSQL" in text and "Fix:" in text, text
    assert _pg_run_ids(platform) == {pg_run} and db.exists()
    assert old


def test_a_restored_store_with_an_empty_postgresql_is_carried_over_keeping_the_older_copy(platform):
    """PostgreSQL as a platform with no data leaves it (MLflow's schema and its Default experiment),
    an earlier ``mlflow.db.migrated`` next to the restored ``mlflow.db``: the restored one is carried
    over, and the earlier copy is not overwritten by its rename."""
    lay = platform.layout
    _pg_client(platform).search_experiments()  # MLflow creates its schema and Default experiment
    earlier = lay.mlflow / "mlflow.db.migrated"
    earlier.write_bytes(b"an earlier carried-over store the user keeps")
    db = mlflow_store.legacy_store(lay)
    runs = _sqlite_store(db, "old-experiment", 2)
    mlflow_store.migrate_legacy(platform, _steps()[1])
    assert _pg_run_ids(platform) == set(runs)
    assert earlier.read_bytes() == b"an earlier carried-over store the user keeps"
    assert not db.exists()
    kept = [p for p in lay.mlflow.iterdir() if p.name.startswith("mlflow.db.migrated") and p != earlier]
    assert len(kept) == 1 and kept[0].stat().st_size > 0


# --- initdb -------------------------------------------------------------------------------------


def _needs_initdb():
    binary("initdb")  # a PlatformError (not a skip) when PostgreSQL is missing: CI has it


@pytest.fixture
def open_dir():
    """A folder the ``postgres`` OS user can traverse (as root ``initdb`` runs as that user), so the
    data folder is ``<state>/postgres`` and not one under /var/lib/airflow-gitops/."""
    path = Path(tempfile.mkdtemp(prefix="datasafe-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_initdb_into_a_folder_holding_a_users_file_keeps_it(open_dir):
    _needs_initdb()
    spec = make_spec(open_dir)
    pg = LocalPostgres(LocalTarget(spec).layout)
    data = spec.state_dir / "postgres"
    data.mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    before = data.stat()
    log = open_dir / "initdb.log"
    with pytest.raises(PlatformError) as err:
        pg.initdb(log)
    assert pg.data_dir == data and not (spec.state_dir / "postgres.location").exists()
    assert (data / "notes.txt").read_text() == "mine"
    assert str(data) in err.value.render()
    now = data.stat()
    assert (now.st_uid, now.st_mode) == (before.st_uid, before.st_mode)  # not taken over either


# ``initdb`` exits non-zero when no file it writes may exceed 1 MiB (its first WAL segment is 16 MiB).
# The limit (soft and hard: runuser's PAM session raises a soft one back) is set in a child process
# that calls the platform's own ``LocalPostgres.initdb``, so this test process keeps its own limits.
_INITDB_UNDER_A_FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from conftest import make_spec
from airflow_gitops.errors import PlatformError
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.local.postgres import LocalPostgres
pg = LocalPostgres(LocalTarget(make_spec(Path(sys.argv[1]))).layout)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited: a write over the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    pg.initdb(Path(sys.argv[2]))
    print(json.dumps({"error": None}))
except PlatformError as err:
    print(json.dumps({"error": err.render()}))
"""


def _initdb_with_a_file_size_limit(base: Path, log: Path) -> str | None:
    """The platform's ``initdb`` under the limit; the rendered PlatformError (None when it passed)."""
    proc = subprocess.run(
        [sys.executable, "-c", _INITDB_UNDER_A_FILE_SIZE_LIMIT, str(base), str(log), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["error"]


@pytest.mark.parametrize("existed", [False, True], ids=["new-folder", "empty-folder-of-the-users"])
def test_a_failed_initdb_removes_only_what_it_created(open_dir, existed):
    _needs_initdb()
    spec = make_spec(open_dir)
    pg = LocalPostgres(LocalTarget(spec).layout)
    root = spec.state_dir
    root.mkdir(parents=True, exist_ok=True)
    (root / "keep.txt").write_text("next to the data folder")
    data = root / "postgres"
    if existed:
        data.mkdir()
        before = data.stat()
    log = open_dir / "initdb.log"
    error = _initdb_with_a_file_size_limit(open_dir, log)
    assert error is not None, "initdb passed under the file size limit: this test no longer makes it fail"
    assert "initdb" in error and str(log) in error and "File too large" in log.read_text(), error
    assert (root / "keep.txt").read_text() == "next to the data folder"
    assert data.is_dir() == existed  # a folder that was there stays, one we made goes
    if existed:
        assert list(data.iterdir()) == []
        now = data.stat()
        assert (now.st_uid, now.st_gid, now.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert not (root / "postgres.location").exists()
    assert not pg.initialized
    assert not (data.parent / ".pwfile").exists()


def test_initdb_refuses_a_file_where_the_data_folder_goes(open_dir):
    spec = make_spec(open_dir)
    pg = LocalPostgres(LocalTarget(spec).layout)
    spec.state_dir.mkdir(parents=True)
    (spec.state_dir / "postgres").write_text("a file of the user's")
    with pytest.raises(PlatformError) as err:  # before: FileExistsError's stack trace
        pg.initdb(open_dir / "initdb.log")
    assert "not a folder" in err.value.render() and "Fix:" in err.value.render()
    assert (spec.state_dir / "postgres").read_text() == "a file of the user's"


def test_a_state_folder_made_again_at_the_same_path_gets_its_own_cluster_and_keeps_the_old(tmp_path):
    """Found by re-cloning: `rm -rf` of a clone, a fresh clone at the same path, `scripts/demo.sh`. The
    state folder (0700, root's) is one PostgreSQL cannot traverse, so its cluster lives under
    /var/lib/airflow-gitops/. It was named after the path alone: the new state folder found the old
    cluster there (whose keys were gone with the old folder) and `up` stopped. Now each state folder made
    gets its own folder, and the old cluster's data stays, untouched, with a note of whose it was."""
    _needs_initdb()
    base = tmp_path / "clone"
    made = []
    try:
        for _ in range(2):
            spec = make_spec(base)
            spec.state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)  # as `up` makes it
            pg = LocalPostgres(LocalTarget(spec).layout)
            pg.initdb(tmp_path / "initdb.log")
            assert pg.initialized and str(pg.data_dir).startswith("/var/lib/airflow-gitops/")
            assert (pg.data_dir.parent / "state-folder").read_text().strip() == str(spec.state_dir)
            made.append(pg.data_dir)
            shutil.rmtree(base)  # the clone goes, with its state folder; the cluster outside stays
        first, second = made
        assert first != second
        assert (first / "PG_VERSION").exists() and (second / "PG_VERSION").exists()  # nothing deleted
    finally:
        for d in made:
            shutil.rmtree(d.parent, ignore_errors=True)
