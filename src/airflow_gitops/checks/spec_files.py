"""``platform.yaml`` itself: valid (it was loaded), and every file it refers to exists."""

from __future__ import annotations

from ..target import Target
from .result import CheckResult, fail, ok


def spec_checks(target: Target) -> list[CheckResult]:
    spec = target.spec
    rows = [ok("spec.valid", f"platform.yaml in {spec.base_dir} is valid (target {target.name})")]
    refs = target.referenced_files()
    missing = [(key, path) for key, path in refs.items() if not path.exists()]
    if missing:
        rows.append(
            fail(
                "spec.files",
                "; ".join(f"{key}: {path} does not exist" for key, path in missing),
                "create the file(s) or correct the path(s) in platform.yaml (relative paths resolve against "
                f"{spec.base_dir})",
            )
        )
    else:
        n = len(refs)
        rows.append(ok("spec.files", f"all {n} referenced file{'s' * (n != 1)} exist" if n else "no files referenced"))
    return rows
