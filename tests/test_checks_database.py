"""Database and Fernet checks against a real PostgreSQL (tests/pg_fixture.py) and a real Airflow schema."""

from __future__ import annotations

from cryptography.fernet import Fernet
from pg_fixture import SEEDED_SECRETS
from pg_fixture import _free_port as unused_port

from airflow_gitops.checks import database, fernet
from airflow_gitops.keystore import write_private
from airflow_gitops.local.platform import LocalTarget
from airflow_gitops.spec import parse_spec


def _spec(tmp_path, url=None, key=None):
    spec = parse_spec({"database": {"url": url}} if url else {}, base_dir=tmp_path)
    if key is not None:
        write_private(fernet.key_file(spec), key + "\n")
    return spec


def _rows(rows):
    return {r.name: r for r in rows}


# --- URL syntax ------------------------------------------------------------------------------------


def test_encoded_password_passes_and_is_redacted():
    r = database.check_url("postgresql://airflow:p%40ss%3Aw%2Frd@db.example.com:5432/airflow")
    assert r.status == "ok" and "p%40ss" not in r.saw and "***" in r.saw


def test_unencoded_at_in_password_fails_with_encoding_fix():
    r = database.check_url("postgresql://airflow:p@ss@db.example.com:5432/airflow")
    assert r.status == "fail" and "@" in r.saw and "p@ss" not in r.saw
    assert "%40" in r.fix and "urllib.parse.quote" in r.fix


def test_unencoded_slash_and_colon_in_password_fail():
    for pw, char in (("pa/ss", "/"), ("pa:ss", ":"), ("pa#ss", "#"), ("100%", "% not followed")):
        r = database.check_url(f"postgresql://airflow:{pw}@db:5432/airflow")
        assert r.status == "fail" and char in r.saw, (pw, r)


def test_at_in_password_via_env_var_is_flagged_by_doctor_rows(tmp_path, monkeypatch):
    # platform.yaml's validator cannot see a password behind ${VAR}; the doctor row does.
    monkeypatch.setenv("AIRFLOW_DB_URL", "postgresql://airflow:s3cr@t@127.0.0.1:1/airflow")
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path, "${AIRFLOW_DB_URL}")))
    assert conn is None
    assert _rows(rows)["database.url"].status == "fail" and "%40" in _rows(rows)["database.url"].fix
    assert "s3cr@t" not in repr(rows)


# --- reachable / version / migrations --------------------------------------------------------------


def test_reachable_database_reports_version_and_head_migration(airflow_db, tmp_path):
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path, airflow_db.url)))
    conn.close()
    rows = _rows(rows)
    assert rows["database.reachable"].status == "ok" and "PostgreSQL 15" in rows["database.reachable"].saw
    assert (
        rows["database.migrations"].status == "ok"
        and "head of the installed Airflow" in rows["database.migrations"].saw
    )


def test_empty_database_warns_that_up_migrates(pg_server, tmp_path):
    url = pg_server.create_database("empty_db")
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path, url)))
    conn.close()
    r = _rows(rows)["database.migrations"]
    assert r.status == "warn" and "airflow db migrate" in r.fix


def test_unknown_revision_fails(pg_server, tmp_path):
    url = pg_server.create_database("future_db")
    c = database.connect(url)
    with c.cursor() as cur:
        cur.execute(
            "CREATE TABLE alembic_version (version_num varchar(32)); INSERT INTO alembic_version VALUES ('ffff')"
        )
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path, url)))
    conn.close()
    r = _rows(rows)["database.migrations"]
    assert r.status == "fail" and "newer Airflow" in r.saw and "restore a backup" in r.fix


def test_unreachable_database_fails_with_fix(tmp_path):
    url = f"postgresql://airflow:pw@127.0.0.1:{unused_port()}/airflow"
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path, url)))
    r = _rows(rows)["database.reachable"]
    assert conn is None and r.status == "fail"
    assert "connection refused" in r.saw and "start PostgreSQL or correct the host/port" in r.fix


def test_wrong_password_fails_with_fix(pg_server, tmp_path):
    pg_server.create_database("pw_db", password="right-password")
    url = f"postgresql://pw_db:wrong-password@127.0.0.1:{pg_server.port}/pw_db"
    rows, _ = database.database_checks(LocalTarget(_spec(tmp_path, url)))
    r = _rows(rows)["database.reachable"]
    assert r.status == "fail" and "password authentication failed" in r.saw and "correct the user/password" in r.fix
    assert "wrong-password" not in repr(rows)


def test_local_database_not_created_yet_is_skipped(tmp_path):
    rows, conn = database.database_checks(LocalTarget(_spec(tmp_path)))
    assert conn is None and rows[0].status == "skip" and "`up` creates it" in rows[0].saw


# --- Fernet ----------------------------------------------------------------------------------------


def test_fernet_key_decrypts_stored_connections_and_variables(airflow_db, tmp_path):
    spec = _spec(tmp_path, airflow_db.url, airflow_db.fernet_key)
    key_row, keys = fernet.check_key(spec)
    assert key_row.status == "ok"
    conn = database.connect(airflow_db.url)
    r = fernet.check_decrypts(conn, keys, spec)
    assert r.status == "ok" and "all 4 encrypted" in r.saw


def test_changed_fernet_key_fails_naming_values_and_fix(airflow_db, tmp_path):
    spec = _spec(tmp_path, airflow_db.url, Fernet.generate_key().decode())  # a "new install" key
    _, keys = fernet.check_key(spec)
    r = fernet.check_decrypts(database.connect(airflow_db.url), keys, spec)
    assert r.status == "fail"
    assert "4 of 4" in r.saw and "connection warehouse (password)" in r.saw and "variable api_token" in r.saw
    assert "InvalidToken" in r.saw and "CURRENT,PREVIOUS" in r.fix and "rotate-fernet-key" in r.fix
    assert not any(s in repr(r) for s in SEEDED_SECRETS)


def test_key_list_being_rotated_decrypts(airflow_db, tmp_path):
    spec = _spec(tmp_path, airflow_db.url, f"{Fernet.generate_key().decode()},{airflow_db.fernet_key}")
    key_row, keys = fernet.check_key(spec)
    assert key_row.status == "ok" and "rotating: 2 keys" in key_row.saw
    assert fernet.check_decrypts(database.connect(airflow_db.url), keys, spec).status == "ok"


def test_malformed_fernet_key_fails(tmp_path):
    spec = _spec(tmp_path, key="not-a-fernet-key")
    r, keys = fernet.check_key(spec)
    assert r.status == "fail" and keys == [] and "32 url-safe base64" in r.saw
    assert "restore the key from your backup" in r.fix and "not-a-fernet-key" not in repr(r)
