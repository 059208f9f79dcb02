"""The Fernet key: well-formed, and able to decrypt what is already stored.

Airflow encrypts Connection passwords/extras and Variable values with the Fernet key. A key that
changed between installs (the seed's "fix the Fernet key so helm delete + install keeps Variables")
shows up only when someone opens a Connection: ``InvalidToken``. With the database reachable, this
check decrypts every stored value (in memory; nothing is printed but names) with the configured key
list, exactly as Airflow does (``MultiFernet``: the first key encrypts, any key decrypts).
"""

from __future__ import annotations

from .. import keystore
from ..errors import PlatformError
from ..fernetkeys import key_file, parse_keys, undecryptable
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, skip

GENERATE = "python -c 'from cryptography.fernet import Fernet;print(Fernet.generate_key().decode())'"


def check_key(spec: PlatformSpec) -> tuple[CheckResult, list[bytes]]:
    name = "fernet.key"
    path = key_file(spec)
    if not path.exists():
        return skip(name, f"{path} does not exist yet: `up`/`render` generates it once and reuses it"), []
    try:
        text = keystore.read_private(path).decode("utf-8", errors="replace")
    except PlatformError as err:
        return fail(name, err.problem, err.fix), []
    keys, problems = parse_keys(text)
    if problems:
        return fail(
            name,
            f"{path}: {'; '.join(problems)}",
            "restore the key from your backup; only if nothing was ever stored with it, generate a new one: "
            + GENERATE,
        ), []
    rotating = f" (rotating: {len(keys)} keys, the first encrypts)" if len(keys) > 1 else ""
    return ok(name, f"{path} holds a well-formed key{rotating}"), keys


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
