"""The interface both targets implement, so that no command branches on a target's name.

``local.platform.LocalTarget`` runs the platform on this machine; ``kubernetes.target.KubernetesTarget``
deploys it with the official chart. The CLI picks one by ``--target``; checks receive the object and
ask it what differs (the database a check should reach, the files the spec refers to there, how to
rotate the Fernet key). The read-only checks themselves live in ``checks/`` and are declared per
target there (``checks.doctor.DOCTOR``), because they import the targets, never the other way round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from rich.console import Console

from .spec import PlatformSpec


class Target(ABC):
    name: ClassVar[str]

    def __init__(self, spec: PlatformSpec):
        self.spec = spec

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

    @abstractmethod
    def rotate_fernet_key(self, console: Console) -> None:
        """Rotate the Fernet key without losing any encrypted Connection or Variable."""
