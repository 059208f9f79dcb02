"""The metadata database: URL syntax, reachable, server version, Airflow migrations state.

A password with ``@``, ``:``, ``/``, ``?``, ``#``, a space or a stray ``%`` must be percent-encoded in a
database URL; unencoded, the URL is split at the wrong place and the failure names the wrong host or
user. This is flagged before anything connects. No password is ever printed (URLs are redacted).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from ..dburl import ENCODE_HINT, connect, explain_connect_error, host_part, password_problems, redact
from ..errors import PlatformError
from ..target import Target
from .result import CheckResult, fail, ok, skip, warn


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
    scheme = url.partition("://")[0]
    if not scheme.startswith("postgres"):
        return fail(name, f"{source} is not a PostgreSQL URL ({scheme}://)", "use postgresql://USER:PASS@HOST:5432/DB")
    return ok(name, redact(url))


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


def database_checks(target: Target) -> tuple[list[CheckResult], object | None]:
    """Rows, and an open connection for the Fernet check (caller closes it) when reachable."""
    spec = target.spec
    try:
        url, why_not = target.checked_database_url()
    except PlatformError as err:  # an unset ${VAR}, say
        return [fail("database.url", err.problem, err.fix or "fix database.url")], None
    if url is None:
        return [skip("database.reachable", why_not)], None
    rows = [check_url(url, "database.url" if spec.database.url else "the local database URL")]
    if rows[0].status == "fail":
        return [*rows, skip("database.reachable", "not checked: fix database.url first")], None
    try:
        conn = connect(url, application_name="airflow-gitops-doctor")
    except Exception as err:  # noqa: BLE001 - psycopg2.OperationalError and friends
        saw, fix = explain_connect_error(err, url)
        if spec.database.url is None and "connection refused" in saw:
            return [*rows, skip("database.reachable", "the local PostgreSQL is not running: `up` starts it")], None
        return [*rows, fail("database.reachable", saw, fix)], None
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        server_version = cur.fetchone()[0]
    major = int(server_version.split(".")[0]) if server_version.split(".")[0].isdigit() else 0
    reach = ok("database.reachable", f"PostgreSQL {server_version} at {host_part(url)}")
    if major and major < 13:
        reach = warn(
            "database.reachable",
            f"PostgreSQL {server_version} is older than Airflow supports (13+)",
            "upgrade PostgreSQL to 13 or newer",
        )
    rows.append(reach)
    rows.append(check_migrations(conn))
    return rows, conn
