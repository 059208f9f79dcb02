"""``platform.yaml`` itself: valid (it was loaded), and every file it refers to exists."""

from __future__ import annotations

from ..spec import PlatformSpec
from .result import CheckResult, fail, ok


def spec_checks(spec: PlatformSpec, target: str) -> list[CheckResult]:
    rows = [ok("spec.valid", f"platform.yaml in {spec.base_dir} is valid (target {target})")]
    refs = {
        "dags.ssh_key_file": spec.dags.ssh_key_file,
        "dags.known_hosts_file": spec.dags.known_hosts_file,
        "aws.credentials_file": spec.aws.credentials_file,
        "aws.config_file": spec.aws.config_file,
    }
    if spec.dags.repo and spec.dags.repo.startswith("/"):
        refs["dags.repo"] = spec.dags.repo
    if spec.kubernetes.chart and "@" not in spec.kubernetes.chart and target == "kubernetes":
        refs["kubernetes.chart"] = spec.kubernetes.chart
    missing = []
    for key, value in refs.items():
        if value is None:
            continue
        path = spec.path(value)
        if not path.exists():
            missing.append((key, path))
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
        n = sum(1 for v in refs.values() if v is not None)
        rows.append(ok("spec.files", f"all {n} referenced file{'s' * (n != 1)} exist" if n else "no files referenced"))
    return rows
