"""What a component record (``components.py``) and the MLflow store (``mlflow_store.py``) use of the
running local platform: its layout, its PostgreSQL and the environment file of its Airflow programs;
and what ``run`` and ``predict`` use of it (:class:`Running`).

``platform.LocalTarget`` is one; the records name this protocol, not the class that orders them, so
they sit below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..spec import PlatformSpec
    from .api import AirflowClient
    from .layout import Layout
    from .postgres import LocalPostgres


class Parts(Protocol):
    layout: Layout
    postgres: LocalPostgres

    @property
    def env_file(self) -> Path: ...


class Running(Parts, Protocol):
    spec: PlatformSpec

    def is_running(self) -> bool: ...

    def client(self) -> AirflowClient: ...

    def parsed_commit(self) -> str | None: ...
