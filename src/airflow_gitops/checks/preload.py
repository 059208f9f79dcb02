"""``local.preload``: is every listed package installed where the platform runs?

A missing one does not stop the scheduler (it is skipped and named in its log), but the tasks that
import it then fail, so doctor says it before ``up``. Only the top-level package is looked up
(``importlib.util.find_spec`` reads no module code): importing scikit-learn to check would take a second.
"""

from __future__ import annotations

import importlib.util

from ..spec import PlatformSpec
from .result import CheckResult, fail, ok


def preload_checks(spec: PlatformSpec) -> list[CheckResult]:
    packages = list(dict.fromkeys(m.split(".")[0] for m in spec.local.preload))
    if not packages:
        return [ok("preload", "local.preload is [] (task processes import their libraries themselves)")]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        return [
            fail(
                "preload",
                f"local.preload lists {', '.join(missing)}, not installed in this environment",
                "install them (add them to the project's dependencies and `uv sync`), or remove them from "
                "local.preload",
            )
        ]
    return [ok("preload", f"{len(packages)} packages to preload in the scheduler: {', '.join(packages)}")]
