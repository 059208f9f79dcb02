"""The metadata database: URL syntax, reachable, server version, Airflow migrations state.

A password with ``@``, ``:``, ``/``, ``?``, ``#``, a space or a stray ``%`` must be percent-encoded in a
database URL; unencoded, the URL is split at the wrong place and the failure names the wrong host or
user. This is flagged before anything connects. No password is ever printed (URLs are redacted).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip, warn

ENCODE_HINT = (
    "percent-encode the password: python -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=\"\"))'"
    " 'PASSWORD' (@ -> %40, : -> %3A, / -> %2F, # -> %23, ? -> %3F, % -> %25)"
)
UNSAFE = {"@": "@", ":": ":", "/": "/", "?": "?", "#": "#", " ": "a space"}


def _split(url: str) -> tuple[str, str]:
    """(scheme, rest) of a URL."""
    scheme, _, rest = url.partition("://")
    return scheme, rest


def password_problems(url: str) -> list[str]:
    """Characters in the URL's password that must be percent-encoded (names, never the password)."""
    scheme, rest = _split(url)
    if not rest:
        return []
    # The password runs from the first ':' of the user info to the LAST '@' before the database path.
    # Work on everything up to the last '@' so a '/' or '?' inside the password is still seen.
    at = rest.rfind("@")
    if at < 0:
        return []
    userinfo = rest[:at]
    if "/" in userinfo.split(":", 1)[0]:  # the '@' belongs to the path/query, not to user info
        return []
    if ":" not in userinfo:
        return []
    password = userinfo.split(":", 1)[1]
    found = [label for ch, label in UNSAFE.items() if ch in password]
    if re.search(r"%(?![0-9A-Fa-f]{2})", password):
        found.append("% not followed by two hex digits")
    return found


def redact(url: str) -> str:
    scheme, rest = _split(url)
    at = rest.rfind("@")
    if at < 0:
        return url
    user = rest[:at].split(":", 1)[0]
    return f"{scheme}://{user}:***@{rest[at + 1 :]}"


def check_url(url: str, source: str = "database.url") -> CheckResult:
    name = "database.url"
    problems = password_problems(url)
    if problems:
        return fail(
            name,
            f"the password in {source} contains {', '.join(problems)} not URL-encoded: the URL would be split "
            "at the wrong place (wrong host/user, or 'invalid port')",
            ENCODE_HINT,
        )
    scheme, _ = _split(url)
    if not scheme.startswith("postgres"):
        return fail(name, f"{source} is not a PostgreSQL URL ({scheme}://)", "use postgresql://USER:PASS@HOST:5432/DB")
    return ok(name, redact(url))


def libpq_url(url: str) -> str:
    """SQLAlchemy URL -> libpq URI (drop the ``+psycopg2`` driver part)."""
    scheme, rest = _split(url)
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


def connect(url: str, timeout: int = 5):
    import psycopg2

    conn = psycopg2.connect(libpq_url(url), connect_timeout=timeout, application_name="airflow-gitops-doctor")
    conn.autocommit = True
    return conn


def explain_connect_error(err: Exception, url: str) -> tuple[str, str]:
    text = str(err).strip().replace("\n", " ")
    try:
        from urllib.parse import urlsplit

        parts = urlsplit(libpq_url(url))
        where = f"{parts.hostname}:{parts.port or 5432}"
        db = (parts.path or "/").lstrip("/")
        user = unquote(parts.username or "")
    except ValueError:
        where, db, user = "the configured host", "", ""
    if "password authentication failed" in text or "no password supplied" in text:
        return (
            f"PostgreSQL at {where} rejected user {user!r}: password authentication failed",
            "correct the user/password in database.url (special characters percent-encoded)",
        )
    if "does not exist" in text and "database" in text:
        return (
            f"database {db!r} does not exist at {where}",
            f"create it: CREATE DATABASE {db} OWNER {user}; (or fix the name in database.url)",
        )
    if "Connection refused" in text:
        return (
            f"nothing accepts connections at {where} (connection refused)",
            "start PostgreSQL or correct the host/port in database.url",
        )
    if "timeout expired" in text or "timed out" in text:
        return (f"no answer from {where} within 5 s", "check the host, port and any firewall/security group")
    if "could not translate host name" in text or "Name or service not known" in text:
        return (f"host of database.url does not resolve ({where})", "correct the host in database.url")
    if "pg_hba.conf" in text:
        return (f"{where} refuses this client (pg_hba.conf)", "allow this host in the server's pg_hba.conf")
    return (f"cannot connect to {where}: {text[:200]}", "check database.url")


def database_url(spec: PlatformSpec, target: str) -> tuple[str | None, CheckResult | None]:
    """The metadata DB URL to check, or (None, a skip/fail row saying why not)."""
    raw = spec.database.url
    if raw:
        if raw.startswith("${") and raw.endswith("}"):
            var = raw[2:-1]
            value = os.environ.get(var)
            if not value:
                return None, fail(
                    "database.url",
                    f"database.url refers to ${{{var}}} but it is not set",
                    f"export {var}=postgresql://...",
                )
            return value, None
        return raw, None
    if target != "local":
        return None, skip(
            "database.url",
            "not checked: database.url is not set (the chart needs an external one)",
            "set database.url to your PostgreSQL",
        )
    from .. import secrets

    if not (spec.secrets_dir / secrets.DB_PASSWORD).exists():
        return None, skip("database.reachable", "the local PostgreSQL does not exist yet: `up` creates it")
    from ..local.platform import LocalPlatform

    return LocalPlatform(spec).database_url(), None


# --- migrations ----------------------------------------------------------------------------------


def _airflow_dir() -> Path:
    found = importlib.util.find_spec("airflow")
    assert found and found.submodule_search_locations
    return Path(next(iter(found.submodule_search_locations)))


@lru_cache(maxsize=1)
def airflow_heads() -> tuple[str, frozenset[str], dict[str, str], set[str]]:
    """(installed Airflow version, alembic head revisions, {revision: Airflow version}, all revisions).

    Read from the installed package's files (no Airflow import: that would configure Airflow in this
    process).
    """
    root = _airflow_dir()
    revisions: set[str] = set()
    downs: set[str] = set()
    for f in (root / "migrations" / "versions").glob("*.py"):
        text = f.read_text(errors="replace")
        m = re.search(r'^revision\s*=\s*["\']([0-9a-f]+)["\']', text, re.M)
        if not m:
            continue
        revisions.add(m.group(1))
        d = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        if d:
            downs.update(re.findall(r'["\']([0-9a-f]+)["\']', d.group(1)))
    heads = frozenset(revisions - downs)
    db_py = (root / "utils" / "db.py").read_text(errors="replace")
    block = re.search(r"_REVISION_HEADS_MAP[^{]*\{(.*?)\}", db_py, re.S)
    by_rev = {rev: ver for ver, rev in re.findall(r'"([\d.]+)":\s*"([0-9a-f]+)"', block.group(1))} if block else {}
    return importlib.metadata.version("apache-airflow"), heads, by_rev, revisions


def check_migrations(conn) -> CheckResult:
    name = "database.migrations"
    version, heads, by_rev, known = airflow_heads()
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return warn(
                name,
                "empty database: no Airflow schema yet",
                "nothing to do: `up` (or `airflow db migrate`) creates the schema",
            )
        cur.execute("SELECT version_num FROM alembic_version")
        current = {r[0] for r in cur.fetchall()}
    if current and current <= heads:
        return ok(name, f"schema at {', '.join(sorted(current))}: the head of the installed Airflow {version}")
    if current & known:
        older = ", ".join(sorted(by_rev.get(r, r) for r in current))
        return warn(
            name,
            f"schema is older than Airflow {version}'s ({older}); the upgrade runs on start",
            "back up the database, then `up`/`airflow db migrate` upgrades it",
        )
    return fail(
        name,
        f"schema revision {', '.join(sorted(current)) or '(none)'} is unknown to Airflow {version}: "
        "a newer Airflow migrated this database",
        "run the Airflow version that migrated it (image.tag / the installed package) or restore a backup",
    )


def database_checks(spec: PlatformSpec, target: str) -> tuple[list[CheckResult], object | None]:
    """Rows, and an open connection for the Fernet check (caller closes it) when reachable."""
    url, why = database_url(spec, target)
    if url is None:
        return [why], None
    rows = [check_url(url, "database.url" if spec.database.url else "the local database URL")]
    if rows[0].status == "fail":
        return [*rows, skip("database.reachable", "not checked: fix database.url first")], None
    try:
        conn = connect(url)
    except Exception as err:  # noqa: BLE001 - psycopg2.OperationalError and friends
        saw, fix = explain_connect_error(err, url)
        if spec.database.url is None and "connection refused" in saw:
            return [*rows, skip("database.reachable", "the local PostgreSQL is not running: `up` starts it")], None
        return [*rows, fail("database.reachable", saw, fix)], None
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        server_version = cur.fetchone()[0]
    major = int(server_version.split(".")[0]) if server_version.split(".")[0].isdigit() else 0
    reach = ok("database.reachable", f"PostgreSQL {server_version} at {redact(url).split('@', 1)[1]}")
    if major and major < 13:
        reach = warn(
            "database.reachable",
            f"PostgreSQL {server_version} is older than Airflow supports (13+)",
            "upgrade PostgreSQL to 13 or newer",
        )
    rows.append(reach)
    rows.append(check_migrations(conn))
    return rows, conn
