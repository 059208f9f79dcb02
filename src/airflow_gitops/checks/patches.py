"""The local platform's patches of Airflow (and FastAPI) internals (``local/patches/``): does the installed
upstream code still match what each was verified on?

Each guard's fingerprint check runs here without applying its patch, on the guarded functions' source
read from the installed files (``Guard.mismatches(imported=False)``: ~0.2 s; importing the Airflow
modules instead costs ~4 CPU-s and starts Airflow in this process, which creates ``$AIRFLOW_HOME/logs``).
The component itself checks the imported objects before it patches; tests/test_patches.py holds the two
equal on the installed versions. A patch that is off still lets the platform run, only slower: a warning.
"""

from __future__ import annotations

from ..local.patches import all_guards
from .result import CheckResult, verdict, warn


def patch_checks() -> list[CheckResult]:
    rows = []
    for guard in all_guards():
        name = f"patch.{guard.patch}"
        bad = guard.mismatches(imported=False)
        rows.append(
            verdict(
                name,
                not bad,
                f"off: upstream changed: {guard.reason(bad)}"
                if bad
                else f"on: {guard.what} (matches {guard.label} {', '.join(guard.verified)})",
                f"install {guard.label} {', '.join(guard.verified)} (what uv.lock pins: `uv sync --frozen`), "
                f"or re-verify the patch in local/patches/{guard.patch}.py and add this version's fingerprints",
                bad=warn,
            )
        )
    return rows
