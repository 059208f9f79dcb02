"""``platform.yaml`` -> :class:`PlatformSpec`, the one source of truth.

Every concept of the design (custom image, executor, fixed Fernet key, Git-synced DAGs, external
PostgreSQL, AWS credentials, logs, ingress, MLflow) has exactly one key here. Both targets read the
spec and nothing else: ``local`` runs it on this machine, ``kubernetes`` renders it for the official
Apache Airflow Helm chart.

With no ``platform.yaml`` at all the embedded defaults serve: a local PostgreSQL, a local bare Git
repository seeded with the example DAGs, and a local S3-compatible endpoint.

Invalid input raises :class:`SpecError`, whose message lists one line per problem with the key's
path and the fix; the CLI prints it and exits without starting anything.

The package's parts, one way: ``base`` (shared checks, :class:`SpecError`) <- ``declared``
(connections, variables, pools) <- ``models`` (the sections, :class:`PlatformSpec`) <- ``checks``
(:func:`parse_spec`) <- ``load`` (:func:`load_spec`, reading the file).
"""

from __future__ import annotations

from .base import SpecError
from .checks import parse_spec
from .declared import MAX_SECRET_FILE_BYTES, FromFile
from .load import MAX_SPEC_BYTES, load_spec
from .models import DEFAULT_PRELOAD, PlatformSpec

__all__ = [
    "DEFAULT_PRELOAD",
    "FromFile",
    "MAX_SECRET_FILE_BYTES",
    "MAX_SPEC_BYTES",
    "PlatformSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
]
