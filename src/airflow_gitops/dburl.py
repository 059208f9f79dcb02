"""Database URLs, the one place that takes them apart: ``${VAR}`` references, the password, redaction.

A password may hold ``@``, ``:`` or ``/``; the host part never holds ``@``. So the user info always
ends at the LAST ``@`` before the path, and every function here splits there (one rule, not three).
No function returns or raises text that contains a password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENCODE_HINT = (
    "percent-encode the password: python -c 'import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1],safe=\"\"))'"
    " 'PASSWORD' (@ -> %40, : -> %3A, / -> %2F, # -> %23, ? -> %3F, % -> %25)"
)
UNSAFE = {"@": "@", ":": ":", "/": "/", "?": "?", "#": "#", " ": "a space"}


class UnsetVariable(ValueError):
    """A ``${VAR}`` reference whose environment variable is unset or empty."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"refers to ${{{name}}} but that environment variable is not set")


def references(text: str) -> list[str]:
    """The names of every ``${VAR}`` in ``text``."""
    return VAR_REF.findall(text)


def expand(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace every ``${VAR}`` with its value; raise :class:`UnsetVariable` for the first one unset.

    A ``$`` that does not start a well-formed ``${NAME}`` stays as it is (it may be part of a password).
    """
    env = os.environ if environ is None else environ

    def value(m: re.Match) -> str:
        v = env.get(m.group(1))
        if not v:
            raise UnsetVariable(m.group(1))
        return v

    return VAR_REF.sub(value, text)


@dataclass(frozen=True)
class Parts:
    scheme: str
    user: str | None  # as written (may be percent-encoded)
    password: str | None  # as written
    rest: str  # host[:port]/db?query

    @classmethod
    def of(cls, url: str) -> Parts:
        scheme, sep, rest = url.partition("://")
        if not sep:
            return cls("", None, None, url)
        at = rest.rfind("@")
        if at < 0 or "/" in rest[:at].split(":", 1)[0]:  # no user info (an '@' in the path is not one)
            return cls(scheme, None, None, rest)
        user, colon, password = rest[:at].partition(":")
        return cls(scheme, user, password if colon else None, rest[at + 1 :])


def redact(url: str) -> str:
    p = Parts.of(url)
    if p.user is None:
        return url
    return f"{p.scheme}://{p.user}:***@{p.rest}" if p.password is not None else f"{p.scheme}://{p.user}@{p.rest}"


def password_problems(url: str) -> list[str]:
    """Characters in the URL's password that must be percent-encoded (names, never the password)."""
    password = Parts.of(url).password
    if not password:
        return []
    found = [label for ch, label in UNSAFE.items() if ch in password]
    if re.search(r"%(?![0-9A-Fa-f]{2})", password):
        found.append("% not followed by two hex digits")
    return found


def encoded(url: str) -> str:
    """The URL with user and password percent-encoded exactly once, ``postgres://`` as ``postgresql://``."""
    p = Parts.of(url)
    scheme = "postgresql" if p.scheme == "postgres" else p.scheme  # SQLAlchemy 2 refuses 'postgres://'
    if p.user is None:
        return f"{scheme}://{p.rest}"
    user = quote(unquote(p.user), safe="")
    if p.password is None:
        return f"{scheme}://{user}@{p.rest}"
    return f"{scheme}://{user}:{quote(unquote(p.password), safe='')}@{p.rest}"


def host_part(url: str) -> str:
    """``host:port/db`` (no user info), for messages."""
    return Parts.of(url).rest


def libpq(url: str) -> str:
    """SQLAlchemy URL -> libpq URI (drop the ``+psycopg2`` driver part)."""
    p = Parts.of(url)
    if not p.scheme.startswith("postgres"):
        return url
    return "postgresql://" + url.partition("://")[2]


def connect(url: str, timeout: int = 5, application_name: str = "airflow-gitops"):
    """A psycopg2 connection in autocommit mode."""
    import psycopg2

    conn = psycopg2.connect(libpq(url), connect_timeout=timeout, application_name=application_name)
    conn.autocommit = True
    return conn


def explain_connect_error(err: Exception, url: str) -> tuple[str, str]:
    text = str(err).strip().replace("\n", " ")
    try:
        parts = urlsplit(libpq(url))
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
