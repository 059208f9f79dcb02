"""The local platform's patches of Airflow (and FastAPI) internals (``local/patches/``): does the installed
upstream code still match what each was verified on?

Each guard's fingerprint check runs here without applying its patch. It imports the guarded Airflow and
FastAPI modules into this process (a few seconds: the scheduler, DAG processor and executor modules), and
reads nothing else. A patch that is off still lets the platform run, only slower, so it is a warning.
"""

from __future__ import annotations

from ..local.patches import all_guards
from .result import CheckResult, ok, warn


def patch_checks() -> list[CheckResult]:
    rows = []
    for guard in all_guards():
        name = f"patch.{guard.patch}"
        bad = guard.mismatches()
        if not bad:
            rows.append(ok(name, f"on: {guard.what} (matches {guard.label} {', '.join(guard.verified)})"))
        else:
            rows.append(
                warn(
                    name,
                    f"off: upstream changed: {guard.reason(bad)}",
                    f"install {guard.label} {', '.join(guard.verified)} (what uv.lock pins: `uv sync --frozen`), "
                    f"or re-verify the patch in local/patches/{guard.patch}.py and add this version's fingerprints",
                )
            )
    return rows
