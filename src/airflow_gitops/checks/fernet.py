"""The Fernet key: well-formed, and able to decrypt what is already stored.

Airflow encrypts Connection passwords/extras and Variable values with the Fernet key. A key that
changed between installs (the seed's "fix the Fernet key so helm delete + install keeps Variables")
shows up only when someone opens a Connection: ``InvalidToken``. With the database reachable, this
check decrypts every stored value (in memory; nothing is printed but names) with the configured key
list, exactly as Airflow does (``MultiFernet``: the first key encrypts, any key decrypts).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .. import secrets
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip

GENERATE = "python -c 'from cryptography.fernet import Fernet;print(Fernet.generate_key().decode())'"


def key_file(spec: PlatformSpec) -> Path:
    return spec.secrets_dir / secrets.FERNET_KEY


def parse_keys(text: str) -> tuple[list[bytes], list[str]]:
    """Split a comma-separated key list; returns (keys, problems)."""
    keys, problems = [], []
    parts = [p.strip() for p in text.strip().split(",")]
    for i, part in enumerate(parts, 1):
        label = "the key" if len(parts) == 1 else f"key {i} of {len(parts)}"
        if not part:
            problems.append(f"{label} is empty (stray comma?)")
            continue
        try:
            Fernet(part.encode())
            keys.append(part.encode())
        except (ValueError, TypeError):
            problems.append(f"{label} is not 32 url-safe base64-encoded bytes ({len(part)} characters)")
    return keys, problems


def check_key(spec: PlatformSpec) -> tuple[CheckResult, list[bytes]]:
    name = "fernet.key"
    path = key_file(spec)
    if not path.exists():
        return skip(name, f"{path} does not exist yet: `up`/`render` generates it once and reuses it"), []
    keys, problems = parse_keys(path.read_text(encoding="utf-8"))
    if problems:
        return fail(
            name,
            f"{path}: {'; '.join(problems)}",
            "restore the key from your backup; only if nothing was ever stored with it, generate a new one: "
            + GENERATE,
        ), []
    rotating = f" (rotating: {len(keys)} keys, the first encrypts)" if len(keys) > 1 else ""
    return ok(name, f"{path} holds a well-formed key{rotating}"), keys


def encrypted_values(conn) -> list[tuple[str, str]]:
    """(label, token) of every encrypted value stored in Airflow's metadata database."""
    out: list[tuple[str, str]] = []
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.connection') IS NOT NULL, to_regclass('public.variable') IS NOT NULL")
        has_conn, has_var = cur.fetchone()
        if has_conn:
            cur.execute("SELECT conn_id, password, is_encrypted, extra, is_extra_encrypted FROM connection")
            for conn_id, password, enc, extra, extra_enc in cur.fetchall():
                if enc and password:
                    out.append((f"connection {conn_id} (password)", password))
                if extra_enc and extra:
                    out.append((f"connection {conn_id} (extra)", extra))
        if has_var:
            cur.execute('SELECT "key", val, is_encrypted FROM variable')
            for key, val, enc in cur.fetchall():
                if enc and val:
                    out.append((f"variable {key}", val))
    return out


def undecryptable(conn, keys: list[bytes]) -> tuple[int, list[str]]:
    """(number of encrypted values, labels of those the key list cannot decrypt)."""
    multi = MultiFernet([Fernet(k) for k in keys])
    values = encrypted_values(conn)
    bad = []
    for label, token in values:
        try:
            multi.decrypt(token.encode())
        except (InvalidToken, ValueError, TypeError):
            bad.append(label)
    return len(values), bad


def check_decrypts(conn, keys: list[bytes], spec: PlatformSpec) -> CheckResult:
    name = "fernet.decrypts"
    if conn is None:
        return skip(name, "not checked: the metadata database is not reachable (see database rows)")
    if not keys:
        return skip(name, "not checked: no usable Fernet key")
    total, bad = undecryptable(conn, keys)
    if not total:
        return ok(name, "no encrypted Connections or Variables stored yet")
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        return fail(
            name,
            f"{len(bad)} of {total} encrypted values cannot be decrypted with the configured key ({shown}): "
            "the key changed after they were stored; Airflow will raise InvalidToken",
            f"put the key they were written with back: as the only key, or after the current one "
            f"('CURRENT,PREVIOUS') in {key_file(spec)}, then `airflow-gitops rotate-fernet-key`; "
            "without the old key these values are lost and must be re-entered",
        )
    return ok(name, f"all {total} encrypted Connection/Variable values decrypt with the configured key")
