"""The local metadata database: a real PostgreSQL cluster in the state directory.

PostgreSQL refuses to run as root. When we are root the cluster belongs to the ``postgres`` OS user
(Debian's server package creates it) and supervisor starts the server as that user. If that user
cannot reach the state directory (e.g. it is under ``/root``), the data directory moves to
``/var/lib/airflow-gitops/<hash>/`` and ``status`` says so.

Only TCP on 127.0.0.1 is used (no Unix socket: its path length limit bites in deep state dirs), with
scram-sha-256 passwords from ``secrets/``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path

from .. import keystore
from ..errors import PlatformError
from .layout import HOST, Layout, postgres_user

DB_NAME = "airflow"
DB_USER = "airflow"


def binary(name: str) -> str:
    """Find a PostgreSQL server binary (PATH, then Debian's versioned folder)."""
    found = shutil.which(name)
    if found:
        return found
    lib = Path("/usr/lib/postgresql")
    if lib.is_dir():
        for version in sorted(lib.iterdir(), reverse=True):
            candidate = version / "bin" / name
            if candidate.exists():
                return str(candidate)
    raise PlatformError(
        f"PostgreSQL's `{name}` was not found (needed for the local metadata database)",
        "install the server: `sudo apt-get install -y postgresql` (Debian/Ubuntu), "
        "or set database.url in platform.yaml to an existing PostgreSQL",
    )


def _as_user_prefix() -> list[str]:
    user = postgres_user()
    return ["runuser", "-u", user.pw_name, "--"] if user else []


def _user_can_traverse(path: Path) -> bool:
    user = postgres_user()
    if user is None:
        return True
    probe = subprocess.run([*_as_user_prefix(), "test", "-x", str(path)], capture_output=True)
    return probe.returncode == 0


class LocalPostgres:
    def __init__(self, layout: Layout):
        self.layout = layout
        self.port = layout.ports.postgres

    @property
    def data_dir(self) -> Path:
        inside = self.layout.root / "postgres"
        if inside.exists() or postgres_user() is None:
            return inside
        marker = self.layout.root / "postgres.location"
        if marker.exists():
            return Path(marker.read_text().strip())
        return inside

    def _choose_data_dir(self) -> Path:
        """Pick the data dir on first init (inside the state dir unless the server user can't reach it)."""
        inside = self.layout.root / "postgres"
        if _user_can_traverse(self.layout.root):
            return inside
        # One folder per state folder *made*, not per path: a state folder removed and made again at the
        # same path (a fresh clone where an old one was) gets a new cluster, and the old one's data stays
        # where it is, untouched (its keys went with the old state folder). The state folder's path is
        # written beside it, so whoever finds it knows what it was.
        digest = hashlib.sha256(str(self.layout.root).encode()).hexdigest()[:12]
        outside = Path("/var/lib/airflow-gitops") / f"{digest}-{secrets.token_hex(4)}" / "postgres"
        (self.layout.root / "postgres.location").write_text(str(outside) + "\n")
        return outside

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initdb(self, log) -> None:
        """Create the cluster. A failed attempt removes only what it made (the folders it created, what
        it wrote into an empty folder that was there, the location marker) and gives such a folder its
        owner and mode back; a folder holding files but no cluster is refused before anything touches it."""
        if self.initialized:
            return
        marker = self.layout.root / "postgres.location"
        had_marker = marker.exists()
        data_dir = self._choose_data_dir()
        created = _missing_folders(data_dir)  # outermost first
        before = None if created else data_dir.stat(follow_symlinks=False)
        note = data_dir.parent / "state-folder"  # outside the state folder: whose cluster this is
        try:
            if data_dir.parent in created:
                data_dir.parent.mkdir(parents=True, mode=0o755)
                note.write_text(str(self.layout.root) + "\n")
            if before is not None:
                _refuse_unusable(data_dir, before)  # before anything is written there
            try:
                self._run_initdb(data_dir, log)
            except BaseException:
                if created:
                    shutil.rmtree(data_dir, ignore_errors=True)
                    if data_dir.parent in created:
                        note.unlink(missing_ok=True)
                    for folder in reversed(created[:-1]):  # parents we made, while nobody else uses them
                        try:
                            folder.rmdir()
                        except OSError:
                            break
                else:
                    _empty_again(data_dir, before)
                raise
        except BaseException:
            if not had_marker:
                marker.unlink(missing_ok=True)
            raise

    def _run_initdb(self, data_dir: Path, log) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        su_password = keystore.pg_superuser_password(self.layout.spec)
        user = postgres_user()
        pwfile = data_dir.parent / ".pwfile"
        keystore.write_private(pwfile, su_password + "\n")  # 0600 from the first byte
        if user:
            os.chown(data_dir, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
            os.chmod(data_dir, 0o700)
        cmd = [
            *_as_user_prefix(),
            binary("initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise PlatformError(
                f"initdb failed while creating the local PostgreSQL cluster in {data_dir} "
                "(what this attempt created there is removed again)",
                "read the log; a common cause is a state directory the 'postgres' user cannot write",
                log=str(log),
            )

    def command(self) -> list[str]:
        return [
            binary("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=100",
            "-c",
            "shared_buffers=32MB",
        ]

    @property
    def run_as(self) -> str | None:
        user = postgres_user()
        return user.pw_name if user else None

    def _connect(self, user: str, password: str, dbname: str):
        import psycopg2

        return psycopg2.connect(
            host=HOST, port=self.port, user=user, password=password, dbname=dbname, connect_timeout=3
        )

    def ready(self) -> bool:
        try:
            self._connect("postgres", keystore.pg_superuser_password(self.layout.spec), "postgres").close()
            return True
        except Exception:
            return False

    def ensure_database(self, name: str = DB_NAME, user: str = DB_USER, password: str | None = None) -> None:
        """Create a role and its database (idempotent); keep the role's password in sync."""
        password = password or keystore.db_password(self.layout.spec)
        conn = self._connect("postgres", keystore.pg_superuser_password(self.layout.spec), "postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {user} WITH LOGIN PASSWORD %s", (password,))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(f"CREATE DATABASE {name} OWNER {user}")
        conn.close()

    def url(self, name: str = DB_NAME, user: str = DB_USER, password: str | None = None) -> str:
        password = password or keystore.db_password(self.layout.spec)
        return f"postgresql+psycopg2://{user}:{password}@{HOST}:{self.port}/{name}"


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not path.exists() and not path.is_symlink() and path != path.parent:
        missing.insert(0, path)
        path = path.parent
    return missing


def _refuse_unusable(data_dir: Path, before: os.stat_result) -> None:
    """An existing data folder without a cluster is used only when it is an empty folder (never a link)."""
    if not stat.S_ISDIR(before.st_mode):
        raise PlatformError(
            f"{data_dir} is in the way of the local PostgreSQL cluster: it is not a folder",
            f"move {data_dir} elsewhere, then `up` again",
        )
    if (data_dir / "PG_VERSION").exists():
        raise PlatformError(
            f"the PostgreSQL data folder {data_dir} holds a cluster this state folder does not know "
            "(made by an earlier state folder at this path?): left untouched",
            f"move {data_dir} elsewhere (or remove it if its data is not needed), then `up` again",
        )
    if any(data_dir.iterdir()):
        raise PlatformError(
            f"the PostgreSQL data folder {data_dir} holds files but no cluster (no PG_VERSION): left untouched",
            f"move what {data_dir} holds elsewhere (or the folder itself), then `up` again",
        )


def _empty_again(data_dir: Path, before: os.stat_result) -> None:
    """A folder that was there, empty, before a failed initdb: empty again, with its owner and mode."""
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    os.chown(data_dir, before.st_uid, before.st_gid)
    os.chmod(data_dir, stat.S_IMODE(before.st_mode))


def wait_until(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
