"""The Fernet key list: parse it, find stored values it cannot decrypt, rotate it without loss.

Airflow encrypts Connection passwords/extras and Variable values with the first key of
``[core] fernet_key`` and decrypts with any of them (``MultiFernet``). Rotation is Airflow's documented
procedure, made safe:

1. the new key goes FIRST in the key list (``NEW,OLD``): new writes use it, old values still decrypt;
2. ``airflow rotate-fernet-key`` re-encrypts every Connection and Variable with the first key;
3. every stored value is proven to decrypt with the NEW key alone, and only then the old key is dropped.

If anything fails in between, the key file keeps ``NEW,OLD``: everything stays readable, and running
the command again finishes the job. Keys are never printed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from rich.console import Console

from . import keystore
from .binaries import venv_bin
from .dburl import connect, explain_connect_error
from .errors import PlatformError
from .spec import PlatformSpec


def key_file(spec: PlatformSpec) -> Path:
    return spec.secrets_dir / keystore.FERNET_KEY


parse_keys = keystore.parse_fernet_keys  # the rule lives with the key file


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


def read_keys(path: Path) -> list[bytes]:
    if not path.exists():
        raise PlatformError(
            f"{path} does not exist: there is no Fernet key to rotate yet",
            "`airflow-gitops up` generates it; rotate later",
        )
    keys, problems = parse_keys(keystore.read_private(path).decode("utf-8", errors="replace"))
    if problems:
        raise PlatformError(
            f"{path}: {'; '.join(problems)}; nothing was changed",
            "restore the key file from your backup first (see `airflow-gitops doctor`)",
        )
    return keys


def _check_all_readable(conn, keys: list[bytes], when: str, path: Path) -> int:
    total, bad = undecryptable(conn, keys)
    if bad:
        raise PlatformError(
            f"{when}: {len(bad)} of {total} encrypted values cannot be decrypted ({', '.join(bad[:5])}); "
            f"{path} was left with every key it had",
            "put the key those values were written with into the list (after the current one) and run again",
        )
    return total


def rotate_keys(key_path: Path, database_url: str, airflow_env: dict[str, str], console: Console) -> int:
    """Rotate the key list at ``key_path`` for the database at ``database_url``. Returns the number of
    encrypted values that were re-encrypted and verified."""
    keys = read_keys(key_path)
    try:
        conn = connect(database_url, application_name="airflow-gitops-rotate")
    except Exception as err:  # noqa: BLE001
        saw, fix = explain_connect_error(err, database_url)
        raise PlatformError(f"cannot rotate: {saw}; nothing was changed", fix) from None
    try:
        _check_all_readable(conn, keys, "before rotating", key_path)
        if len(keys) > 1:
            console.print(f"Resuming an unfinished rotation ({len(keys)} keys in {key_path}).")
            new_list = keys
        else:
            new_list = [Fernet.generate_key(), *keys]
            keystore.write_private(key_path, b",".join(new_list).decode() + "\n")
            console.print(f"1/3 new key added first in {key_path} (the old key still decrypts)")
        env = {**airflow_env, "AIRFLOW__CORE__FERNET_KEY": b",".join(new_list).decode()}
        proc = subprocess.run(
            [venv_bin("airflow"), "rotate-fernet-key"], env=env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:400]
            raise PlatformError(
                f"`airflow rotate-fernet-key` failed: {tail}; {key_path} keeps both keys, nothing is lost",
                "fix the cause and run `airflow-gitops rotate-fernet-key` again to finish",
            )
        console.print("2/3 `airflow rotate-fernet-key` re-encrypted every Connection and Variable")
        total = _check_all_readable(conn, new_list[:1], "after `airflow rotate-fernet-key`", key_path)
        keystore.write_private(key_path, new_list[0].decode() + "\n")
        console.print(f"3/3 all {total} encrypted values decrypt with the new key alone; old key dropped")
        return total
    finally:
        conn.close()
