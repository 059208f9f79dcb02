"""``airflow-gitops doctor``: every preflight check, as a table (or ``--json``); exit 1 on any failure.

The checks automate the seed's troubleshooting list (wrong subPath, SSH key permissions, deploy key
access) and the failures users otherwise meet one pod log at a time (Fernet key changed, password not
URL-encoded, broken AWS credentials file, missing Secrets, a ReadWriteOnce logs volume).

:data:`DOCTOR` declares them: a row group, the function, and the :class:`~airflow_gitops.target.Capability`
it needs, if any. A target declares its capabilities (``Target.capabilities``); a check whose capability
the target lacks is a skipped row. No check names a target, so a new target gets every check that applies
to it by declaring what it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

from ..target import Capability, Target
from .aws import aws_checks
from .database import database_checks
from .declared import drift_checks, resolve_checks
from .fernet import check_decrypts, check_key
from .git import git_checks
from .kube import kube_checks
from .patches import patch_checks
from .preload import preload_checks
from .result import CheckResult, emit, fail, skip
from .spec_files import spec_checks
from .ssh import ssh_checks
from .task_user import task_user_checks


@dataclass
class Context:
    """What one check hands the next: the database connection and the Fernet keys."""

    target: Target
    conn: object | None = None
    keys: list[bytes] | None = None


def _fernet_key(ctx: Context) -> list[CheckResult]:
    row, ctx.keys = check_key(ctx.target.spec)
    return [row]


def _database(ctx: Context) -> list[CheckResult]:
    rows, ctx.conn = database_checks(ctx.target)
    return rows


@dataclass(frozen=True)
class Check:
    group: str
    run: Callable[[Context], list[CheckResult]]
    needs: Capability | None = None  # None: every target

    def applies_to(self, target: Target) -> bool:
        return self.needs is None or self.needs in target.capabilities


DOCTOR: list[Check] = [
    Check("spec", lambda ctx: spec_checks(ctx.target)),
    Check("ssh", lambda ctx: ssh_checks(ctx.target.spec)),
    Check("git", lambda ctx: git_checks(ctx.target.spec)),
    Check("fernet.key", _fernet_key),
    Check("database", _database),
    Check("fernet.decrypts", lambda ctx: [check_decrypts(ctx.conn, ctx.keys or [], ctx.target.spec)]),
    Check("declared.refs", lambda ctx: resolve_checks(ctx.target.spec)),
    Check("declared.drift", lambda ctx: drift_checks(ctx.target.spec, ctx.conn, ctx.keys), needs=Capability.SYNC),
    Check("aws", lambda ctx: aws_checks(ctx.target.spec)),
    Check("kube", lambda ctx: kube_checks(ctx.target.spec), needs=Capability.CLUSTER),
    Check("preload", lambda ctx: preload_checks(ctx.target.spec), needs=Capability.AIRFLOW_HERE),
    Check("patches", lambda ctx: patch_checks(), needs=Capability.AIRFLOW_HERE),
    Check("task_user", lambda ctx: task_user_checks(ctx.target.spec), needs=Capability.AIRFLOW_HERE),
]


def _guard(check: Check, ctx: Context) -> list[CheckResult]:
    """A check that crashes is a failed row naming the crash, not a stack trace for the whole table."""
    try:
        return check.run(ctx)
    except Exception as err:  # noqa: BLE001
        return [
            fail(
                check.group,
                f"the check itself failed: {type(err).__name__}: {str(err)[:200]}",
                "report this with `airflow-gitops doctor --json` output",
            )
        ]


def run_doctor(target: Target) -> list[CheckResult]:
    ctx = Context(target)
    rows: list[CheckResult] = []
    try:
        for check in DOCTOR:
            if check.applies_to(target):
                rows += _guard(check, ctx)
            else:
                rows.append(skip(check.group, f"not checked: target is {target.name}"))
    finally:
        if ctx.conn is not None:
            ctx.conn.close()
    return rows


def doctor_command(target: Target, *, as_json: bool, console: Console) -> int:
    results = run_doctor(target)
    title = f"airflow-gitops doctor ({target.name})"
    return emit(results, console, title=title, as_json=as_json, target=target.name)
