"""``airflow-gitops doctor``: every preflight check, as a table (or ``--json``); exit 1 on any failure.

The checks automate the seed's troubleshooting list (wrong subPath, SSH key permissions, deploy key
access) and the failures users otherwise meet one pod log at a time (Fernet key changed, password not
URL-encoded, broken AWS credentials file, missing Secrets, a ReadWriteOnce logs volume).
"""

from __future__ import annotations

from rich.console import Console

from ..spec import PlatformSpec
from .aws import aws_checks
from .database import database_checks
from .fernet import check_decrypts, check_key
from .git import git_checks
from .kube import kube_checks
from .result import CheckResult, emit, fail, skip
from .spec_files import spec_checks
from .ssh import ssh_checks


def _guard(name: str, fn, *args) -> list[CheckResult]:
    """A check that crashes is a failed row naming the crash, not a stack trace for the whole table."""
    try:
        out = fn(*args)
        return out if isinstance(out, list) else [out]
    except Exception as err:  # noqa: BLE001
        return [
            fail(
                name,
                f"the check itself failed: {type(err).__name__}: {str(err)[:200]}",
                "report this with `airflow-gitops doctor --json` output",
            )
        ]


def run_doctor(spec: PlatformSpec, target: str) -> list[CheckResult]:
    rows: list[CheckResult] = []
    rows += _guard("spec", spec_checks, spec, target)
    rows += _guard("ssh", ssh_checks, spec)
    rows += _guard("git", git_checks, spec)
    key_row, keys = check_key(spec)
    rows.append(key_row)
    conn = None
    try:
        db_rows, conn = database_checks(spec, target)
    except Exception as err:  # noqa: BLE001
        db_rows = [
            fail(
                "database",
                f"the check itself failed: {type(err).__name__}: {str(err)[:200]}",
                "report this with `airflow-gitops doctor --json` output",
            )
        ]
    rows += db_rows
    try:
        rows += _guard("fernet.decrypts", check_decrypts, conn, keys, spec)
    finally:
        if conn is not None:
            conn.close()
    rows += _guard("aws", aws_checks, spec)
    if target == "kubernetes":
        rows += _guard("kube", kube_checks, spec)
    else:
        rows.append(skip("kube", "not checked: target is local"))
    return rows


def doctor_command(spec: PlatformSpec, target: str, *, as_json: bool, console: Console) -> int:
    results = run_doctor(spec, target)
    return emit(results, console, title=f"airflow-gitops doctor ({target})", as_json=as_json, target=target)
