"""What ``status`` reports of the local platform (``LocalTarget.status()``): typed, printed by
``report.py`` and as ``status --json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ComponentStatus:
    state: str
    healthy: bool
    pid: int | None
    log: str
    detail: str | None = None  # e.g. what serving serves (components.Component.detail)


@dataclass
class PlatformStatus:
    """What ``status`` shows (and ``status --json`` prints); never a secret, only the password's file."""

    running: bool
    healthy: bool
    state_dir: str
    components: dict[str, ComponentStatus]
    urls: dict[str, str]
    api_url: str
    login: dict[str, str]
    dag_repo: str
    branch: str
    sub_path: str
    branch_head: str | None
    parsed_commit: str | None
    persistence: dict[str, list[str]] = field(default_factory=dict)
    # connections / variables / pools -> {"managed": n, "hand_made": m} (names only; empty when stopped)
    declared: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
