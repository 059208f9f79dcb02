"""platform.yaml's connections, variables and pools: their references resolve, and (local target) what
Airflow stores still matches them: drift is a managed object changed or deleted in the UI, a hand-made
object with a declared name, or a managed one platform.yaml no longer declares. Each is a ``warn`` row
whose fix is ``airflow-gitops sync``. Values are compared in memory and never shown: only names and
field names.
"""

from __future__ import annotations

from .. import managed
from ..local.sync import plan, read_stored
from ..spec import PlatformSpec, SpecError
from .result import CheckResult, fail, ok, skip, warn

SYNC = "`airflow-gitops sync` (creates, updates and deletes what platform.yaml manages; hand-made ones stay)"


def resolve_checks(spec: PlatformSpec) -> list[CheckResult]:
    """Every ``${VAR}`` is set and every ``from_file`` readable (what `up`, `sync` and `render` need)."""
    name = "declared.refs"
    try:
        declared = managed.resolve(spec)
    except SpecError as err:
        shown = "; ".join(f"{path}: {msg}" for path, msg in err.problems[:6])
        more = f" and {len(err.problems) - 6} more" if len(err.problems) > 6 else ""
        return [fail(name, shown + more, err.fix)]
    login = f"; MLflow login of user {declared.mlflow_login[0]!r} resolves" if declared.mlflow_login else ""
    if not (spec.connections or spec.variables):
        return [ok(name, f"platform.yaml declares no connections or variables{login}")]
    n = len(declared.secrets)
    return [
        ok(
            name,
            f"{len(spec.connections)} connections, {len(spec.variables)} variables: every ${{VAR}} and from_file "
            f"resolves ({n} secret value{'s' * (n != 1)}, not shown){login}",
        )
    ]


def drift_checks(spec: PlatformSpec, conn, keys: list[bytes] | None) -> list[CheckResult]:
    """What Airflow stores vs platform.yaml (the local target: Kubernetes reads them from a Secret)."""
    name = "declared.drift"
    try:
        declared = managed.resolve(spec)
    except SpecError:
        return [skip(name, "not checked: the references do not resolve (see declared.refs)")]
    if conn is None:
        return [skip(name, "not checked: the metadata database is not reachable (see database)")]
    if not keys:
        return [skip(name, "not checked: no usable Fernet key to read stored values with")]
    rows: list[CheckResult] = []
    result = plan(declared, read_stored(conn, keys))
    for kind in managed.KINDS:
        changes = [c for c in result.changes if c.kind == kind]
        wanted, by_hand = result.managed[kind], result.hand_made[kind]
        row = f"declared.{kind}"
        if not changes:
            if wanted or by_hand:
                left = f"; {len(by_hand)} made by hand, left alone" if by_hand else ""
                rows.append(ok(row, f"{len(wanted)} managed, as platform.yaml declares them{left}"))
            continue
        parts = []
        for action, label in (
            ("create", "missing (deleted in the UI, or not synced yet)"),
            ("update", "changed in the UI (or platform.yaml changed since the last sync)"),
            ("adopt", "made by hand under a declared name"),
            ("delete", "managed but no longer in platform.yaml"),
        ):
            items = [c for c in changes if c.action == action]
            if items:
                named = ", ".join(f"{c.name} ({', '.join(c.fields)})" if c.fields else c.name for c in items)
                parts.append(f"{label}: {named}")
        rows.append(warn(row, "; ".join(parts), SYNC))
    return rows or [ok(name, "platform.yaml declares no connections, variables or pools, and none are managed")]
