"""``local.task_user``: which OS user DAG code will run as on the local target, and can it?

As root, ``up`` runs DAG code (tasks, DAG-file parses) as a user of its own (``local/task_user.py``):
this row says which, and fails on what would stop ``up`` - a named user that does not exist or shares
its group, a state folder it cannot reach, a Python environment it cannot run, the hand-over patch off.
Without root, or with ``same``, DAG code runs as the user who runs ``up`` and can read what that user can,
including the platform's keys: a warning saying so (docs/architecture.md, "Who can read what").
"""

from __future__ import annotations

import os
import pwd

from ..errors import PlatformError
from ..local import task_user
from ..local.layout import Layout
from ..local.patches import task_zygote
from ..spec import PlatformSpec
from .result import CheckResult, fail, ok, warn

NAME = "local.task_user"


def task_user_checks(spec: PlatformSpec) -> list[CheckResult]:
    layout = Layout(spec)
    name = task_user.wanted(layout)
    if name is None:
        who = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        return [
            warn(
                NAME,
                f"DAG code runs as {who}, the user who runs `up`: it can read what {who} can, the platform's "
                "keys (airflow.cfg) included",
                "run `up` as root (DAG code then runs as a user of its own)"
                if os.geteuid() != 0
                else "set local.task_user: auto (DAG code then runs as airflow-gitops-tasks, a user of its own)",
            )
        ]
    bad = task_zygote.GUARD.mismatches(imported=False)
    if bad:
        return [
            fail(
                NAME,
                f"DAG code is to run as {name}, but the hand-over patch is off: {task_zygote.GUARD.reason(bad)}",
                "use the Airflow of uv.lock (`uv sync --frozen`), or set local.task_user: same",
            )
        ]
    try:
        pwd.getpwnam(name)
    except KeyError:
        if spec.local.task_user == "auto":
            return [ok(NAME, f"DAG code will run as {name}, a system user `up` creates (it does not exist yet)")]
    try:
        user = task_user.resolve(layout)
        why = task_user.problem(layout, user)
        if why is not None and spec.local.task_user == "auto":
            return [warn(NAME, f"{why.problem}: `up` runs DAG code as root instead (it can read the keys)", why.fix)]
        if why is not None:
            raise why
        if layout.task_home.is_dir():
            task_user.check_can_run(user, layout.task_home)
    except PlatformError as err:
        return [fail(NAME, err.problem, err.fix)]
    return [ok(NAME, f"DAG code runs as {user.name} (uid {user.uid}), which cannot read the platform's keys")]
