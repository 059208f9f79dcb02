"""A throw-away PostgreSQL server on a free 127.0.0.1 port, for tests that need a real database.

Usage::

    (registered in conftest.py through pytest_plugins: request the fixture by name)

    def test_x(pg_server):
        url = pg_server.create_database("t1")        # postgresql://t1:PASSWORD@127.0.0.1:PORT/t1
        ...

``initdb``/``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` OS user
(``runuser -u postgres --``) on a data directory that user owns, in a folder under /tmp it can
traverse. TCP connections need a password (scram-sha-256), as a real server would. The server is
stopped and its folder removed at the end of the session. Skips when the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ports import free_port as _free_port


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / name).exists():
            return str(version / name)
    return None


@dataclass
class PgServer:
    port: int
    superuser_password: str
    root: Path
    host: str = "127.0.0.1"

    @property
    def log_file(self) -> Path:
        return self.root / "data" / "server.log"

    def url(self, user: str = "postgres", password: str | None = None, db: str = "postgres") -> str:
        return f"postgresql://{user}:{password or self.superuser_password}@{self.host}:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user="postgres", password=self.superuser_password, dbname=db
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str, password: str | None = None, template: str | None = None) -> str:
        """A fresh role + database named ``name`` (a copy of ``template`` when given); returns its URL."""
        password = password or secrets.token_urlsafe(12)
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'DROP ROLE IF EXISTS "{name}"')
            cur.execute(f'CREATE ROLE "{name}" LOGIN PASSWORD %s', (password,))
            copy = f' TEMPLATE "{template}"' if template else ""
            cur.execute(f'CREATE DATABASE "{name}" OWNER "{name}"{copy}')
        conn.close()
        from urllib.parse import quote

        return f"postgresql://{name}:{quote(password, safe='')}@{self.host}:{self.port}/{name}"


def start_postgres(
    host: str = "127.0.0.1", allow: str | None = None, log_connections: bool = False
) -> tuple[PgServer, callable]:
    """A server listening on ``host``; ``allow`` (a CIDR) may connect with a password besides localhost;
    ``log_connections``: each connection in ``server.log_file`` as ``[client-address/database]LOG: ...``."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
    root.chmod(0o755)
    data = root / "data"
    pwfile = root / "pw"
    password = secrets.token_urlsafe(16)
    pwfile.write_text(password + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        data.mkdir()
        os.chown(data, pg.pw_uid, pg.pw_gid)
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [
            *prefix,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    pwfile.unlink()
    if allow:
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {allow} scram-sha-256\n")
    opts = f"-c listen_addresses={host} -c port={port} -c unix_socket_directories={data} -c fsync=off"
    if log_connections:
        opts += " -c log_connections=on -c log_line_prefix='[%h/%d]'"
    log = data / "server.log"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "start"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = PgServer(port, password, root, host=host)

    def stop():
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            server.connect().close()
            break
        except Exception:
            time.sleep(0.2)
    return server, stop


@pytest.fixture(scope="session")
def pg_server():
    """A running PostgreSQL for the whole session; see the module docstring."""
    server, stop = start_postgres()
    try:
        yield server
    finally:
        stop()


SEED_SCRIPT = """
from airflow.models import Connection, Variable
from airflow.utils.session import create_session
with create_session() as s:
    s.add(Connection(conn_id="warehouse", conn_type="postgres", host="db", login="u",
                     password="conn-password-value", extra='{"token": "conn-extra-value"}'))
    s.add(Connection(conn_id="plain", conn_type="http", host="example.com"))
    s.add(Variable(key="api_token", val="variable-secret-value"))
    s.add(Variable(key="threshold", val="0.9"))
"""
# The plaintext values the seeded database holds encrypted (tests assert none of them is ever printed).
SEEDED_SECRETS = ["conn-password-value", "conn-extra-value", "variable-secret-value"]


@dataclass
class AirflowDb:
    url: str  # postgresql+psycopg2://... (as Airflow wants it)
    fernet_key: str  # the key the seeded values were encrypted with
    env: dict  # environment to run `airflow` commands against this database


def airflow_env(url: str, fernet_key: str, home: Path) -> dict:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        "AIRFLOW__CORE__FERNET_KEY": fernet_key,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
    }


@pytest.fixture(scope="session")
def airflow_template_db(pg_server, tmp_path_factory):
    """A database migrated to the installed Airflow's schema and seeded with encrypted Connections and
    Variables (``airflow db migrate`` + ORM inserts; ~25 s, once per session). Tests copy it."""
    import sys

    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    url = pg_server.create_database("airflow_template").replace("postgresql://", "postgresql+psycopg2://")
    env = airflow_env(url, key, tmp_path_factory.mktemp("airflow_home"))
    airflow = str(Path(sys.executable).with_name("airflow"))
    for cmd in ([airflow, "db", "migrate"], [sys.executable, "-c", SEED_SCRIPT]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return key, env["AIRFLOW_HOME"]


@pytest.fixture
def airflow_db(pg_server, airflow_template_db, request) -> AirflowDb:
    """A fresh copy of the seeded Airflow database for one test (CREATE DATABASE ... TEMPLATE)."""
    key, home = airflow_template_db
    name = "af_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    url = pg_server.create_database(name, template="airflow_template")
    c2 = pg_server.connect(name)
    with c2.cursor() as cur:
        cur.execute(f'REASSIGN OWNED BY airflow_template TO "{name}"')
    c2.close()
    url = url.replace("postgresql://", "postgresql+psycopg2://")
    return AirflowDb(url, key, airflow_env(url, key, Path(home)))
