"""The one interface every target implements: the whole lifecycle, so the CLI never branches on a target.

``local.platform.LocalTarget`` runs the platform on this machine; ``kubernetes.target.KubernetesTarget``
deploys it with the official chart. The CLI picks one by ``--target`` (``cli.TARGETS``) and calls the
verb's method; a verb a target does not implement raises one :class:`PlatformError` naming it and what
to use instead (:meth:`Target.unsupported`, here, once). Checks receive the object and ask it what
differs (the database a check should reach, the files the spec refers to there, which
:class:`Capability` it has). The read-only checks themselves live in ``checks/``, above the targets
(``checks.doctor.DOCTOR`` names the capability each check needs; ``checks.verify.VERIFY`` the rows
per ``Target.name``), because they import the targets, never the other way round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rich.console import Console

from .errors import PlatformError
from .spec import PlatformSpec


class Capability(StrEnum):
    """What a target does that some doctor checks need (a check names one; a target declares its set)."""

    AIRFLOW_HERE = "airflow-here"  # Airflow's processes run on this machine (preload, patches of internals)
    SYNC = "sync"  # the target applies platform.yaml's Connections, Variables and pools itself (drift)
    CLUSTER = "cluster"  # the platform runs in a Kubernetes cluster (kubeconfig, Secrets, volumes)


class StatusReport(Protocol):
    """What ``status`` prints: ``running`` decides the exit code, ``to_dict()`` is ``status --json``."""

    running: bool

    def to_dict(self) -> dict[str, Any]: ...


class SyncResult(Protocol):
    """What ``sync`` applied (or would): ``to_dict()`` and ``summary()`` are ``sync --json``."""

    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


# CLI verb -> the Target method that implements it (each optional: see Target.unsupported).
VERBS = {
    "up": "up",
    "down": "down",
    "status": "status",
    "logs": "logs",
    "sync": "sync",
    "run": "run_dag",
    "predict": "predict",
    "render": "render",
    "deploy": "deploy",
    "rotate-fernet-key": "rotate_fernet_key",
}


class Target(ABC):
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # CLI verb -> what to do instead on this target, for the verbs it does not implement (a class
    # attribute, or a property when the hint names values of the spec).
    instead: dict[str, str] = {}

    def __init__(self, spec: PlatformSpec):
        self.spec = spec

    # --- what the checks ask ---------------------------------------------------------------------
    @abstractmethod
    def checked_database_url(self) -> tuple[str | None, str]:
        """(URL of the metadata database this target's Airflow uses, or None and why it is not known yet).

        Raises PlatformError for a ``${VAR}`` in ``database.url`` whose variable is unset.
        """

    def referenced_files(self) -> dict[str, Path]:
        """platform.yaml keys -> files they name that must exist for this target."""
        spec = self.spec
        refs = {
            "dags.ssh_key_file": spec.dags.ssh_key_file,
            "dags.known_hosts_file": spec.dags.known_hosts_file,
            "aws.credentials_file": spec.aws.credentials_file,
            "aws.config_file": spec.aws.config_file,
        }
        if spec.dags.repo and spec.dags.repo.startswith("/"):
            refs["dags.repo"] = spec.dags.repo
        return {**{k: spec.path(v) for k, v in refs.items() if v is not None}, **spec.declared_files()}

    # --- the lifecycle: one method per CLI verb (VERBS); a target overrides those it does ----------
    def unsupported(self, verb: str) -> PlatformError:
        """The one message for a verb this target does not implement: what to use instead."""
        fix = self.instead.get(verb) or f"--target {self.name} supports: {', '.join(self.supported_verbs())}"
        return PlatformError(f"`{verb}` does not apply to --target {self.name}", fix)

    @classmethod
    def supported_verbs(cls) -> list[str]:
        return [verb for verb, method in VERBS.items() if getattr(cls, method) is not getattr(Target, method)]

    def up(self, console: Console) -> None:
        """Start the platform and wait until every component is healthy."""
        raise self.unsupported("up")

    def down(self, console: Console) -> None:
        """Stop the platform; keep all its data."""
        raise self.unsupported("down")

    def status(self) -> StatusReport:
        raise self.unsupported("status")

    def print_status(self, report: StatusReport, console: Console) -> None:
        """``status`` without ``--json`` (unless the target prints it its own way: the report's fields)."""
        console.print_json(data=report.to_dict(), default=str)

    def logs(self, component: str | None, lines: int, console: Console) -> None:
        raise self.unsupported("logs")

    def sync(self, console: Console, *, dry_run: bool = False) -> SyncResult:
        """Make Airflow's Connections, Variables and pools match platform.yaml."""
        raise self.unsupported("sync")

    def print_plan(self, result: SyncResult, console: Console, *, dry_run: bool) -> None:
        """``sync`` without ``--json`` (unless the target prints it its own way: the summary line)."""
        console.print(result.summary(), highlight=False)

    def run_dag(self, dag_id: str, conf: str | None, timeout: float, console: Console) -> dict:
        """Trigger a DAG, wait for it, print its tasks; PlatformError when the run fails."""
        raise self.unsupported("run")

    def predict(self, records: str | None, console: Console) -> dict:
        """Ask the serving component for predictions from the champion model."""
        raise self.unsupported("predict")

    def render(self, out: Path, *, chart: str | None, console: Console) -> Any:
        """Write the files a deployment is made of into ``out``."""
        raise self.unsupported("render")

    def deploy(
        self, out: Path, *, chart: str | None, dry_run: bool, console: Console, wait: bool, timeout: int
    ) -> None:
        raise self.unsupported("deploy")

    def rotate_fernet_key(self, console: Console) -> None:
        """Rotate the Fernet key without losing any encrypted Connection or Variable."""
        raise self.unsupported("rotate-fernet-key")
