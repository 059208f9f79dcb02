"""``airflow-gitops rotate-fernet-key``: Airflow's documented rotation, without losing any value.

1. the new key goes FIRST in the key list (``NEW,OLD``): new writes use it, old values still decrypt;
2. ``airflow rotate-fernet-key`` re-encrypts every Connection and Variable with the first key;
3. every stored value is proven to decrypt with the NEW key alone, and only then the old key is dropped.

If anything fails in between, the key file keeps ``NEW,OLD``: everything stays readable, and running
the command again finishes the job. Keys are never printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from rich.console import Console

from ..errors import PlatformError
from ..secrets import write_private
from ..spec import PlatformSpec
from .database import connect, explain_connect_error
from .fernet import key_file, parse_keys, undecryptable


def _airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else (shutil.which("airflow") or "airflow")


def _read_keys(path: Path) -> list[bytes]:
    if not path.exists():
        raise PlatformError(
            f"{path} does not exist: there is no Fernet key to rotate yet",
            "`airflow-gitops up` generates it; rotate later",
        )
    keys, problems = parse_keys(path.read_text(encoding="utf-8"))
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
    keys = _read_keys(key_path)
    try:
        conn = connect(database_url)
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
            write_private(key_path, b",".join(new_list).decode() + "\n")
            console.print(f"1/3 new key added first in {key_path} (the old key still decrypts)")
        env = {**airflow_env, "AIRFLOW__CORE__FERNET_KEY": b",".join(new_list).decode()}
        proc = subprocess.run(
            [_airflow_bin(), "rotate-fernet-key"], env=env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:400]
            raise PlatformError(
                f"`airflow rotate-fernet-key` failed: {tail}; {key_path} keeps both keys, nothing is lost",
                "fix the cause and run `airflow-gitops rotate-fernet-key` again to finish",
            )
        console.print("2/3 `airflow rotate-fernet-key` re-encrypted every Connection and Variable")
        total = _check_all_readable(conn, new_list[:1], "after `airflow rotate-fernet-key`", key_path)
        write_private(key_path, new_list[0].decode() + "\n")
        console.print(f"3/3 all {total} encrypted values decrypt with the new key alone; old key dropped")
        return total
    finally:
        conn.close()


def _rotate_local(spec: PlatformSpec, console: Console) -> None:
    from ..local.platform import LocalPlatform

    platform = LocalPlatform(spec)
    if not platform.status()["running"]:
        raise PlatformError(
            "the local platform is not running: the rotation needs its database",
            "`airflow-gitops up`, then run `airflow-gitops rotate-fernet-key` again",
        )
    rotate_keys(key_file(spec), platform.database_url(), platform.airflow_env(), console)
    console.print("Restarting the components so they run with the new key only ...")
    platform.down(console)
    platform.up(console)


def _rotate_kubernetes(spec: PlatformSpec, console: Console) -> None:
    """Two runs around a deploy: the Secret is written by `deploy` from STATE_DIR/secrets/fernet.key."""
    path = key_file(spec)
    keys = _read_keys(path)
    ns, release, secret = spec.kubernetes.namespace, spec.kubernetes.release, spec.secrets.fernet_key_secret
    rotate = f"kubectl -n {ns} exec deploy/{release}-scheduler -- airflow rotate-fernet-key"
    if len(keys) == 1:
        write_private(path, Fernet.generate_key().decode() + "," + keys[0].decode() + "\n")
        console.print(
            f"Step 1 of 2 done: a new key is FIRST in {path} (the old key still decrypts).\n"
            f"Now:\n  1. `airflow-gitops deploy`   (updates Secret {ns}/{secret}; pods restart with NEW,OLD)\n"
            f"  2. `{rotate}`   (re-encrypts every Connection and Variable)\n"
            "  3. `airflow-gitops rotate-fernet-key --target kubernetes` again (drops the old key after proving "
            "every value decrypts with the new one), then `airflow-gitops deploy`."
        )
        return
    url = spec.database.resolved_url()
    if not url:
        raise PlatformError("database.url is not set", "set database.url to the cluster's metadata database")
    try:
        conn = connect(url)
    except Exception as err:  # noqa: BLE001
        saw, fix = explain_connect_error(err, url)
        raise PlatformError(
            f"cannot prove the rotation finished: {saw}; {path} keeps both keys (nothing is lost)",
            f"{fix}; or run this where the database is reachable",
        ) from None
    try:
        total, bad = undecryptable(conn, keys[:1])
    finally:
        conn.close()
    if bad:
        raise PlatformError(
            f"{len(bad)} of {total} values are not re-encrypted with the new key yet ({', '.join(bad[:5])}); "
            f"{path} keeps both keys",
            f"`airflow-gitops deploy` (pods must have NEW,OLD), then `{rotate}`, then run this again",
        )
    write_private(path, keys[0].decode() + "\n")
    console.print(
        f"All {total} encrypted values decrypt with the new key alone; the old key is dropped from {path}.\n"
        f"Run `airflow-gitops deploy` to update Secret {ns}/{secret} (pods restart with the new key only)."
    )


def rotate_command(spec: PlatformSpec, target: str, *, console: Console) -> None:
    if target == "kubernetes":
        _rotate_kubernetes(spec, console)
    else:
        _rotate_local(spec, console)
