"""The DAG repository template: what ``init`` and the local ``up`` seed into the DAG Git repository.

The folder returned by :func:`template_dir` is the *root* of that repository (``dags/``, ``tests/``,
``requirements.txt``, ``README.md``). The platform's GitDagBundle reads the ``dags`` subdirectory.
"""

from __future__ import annotations

from pathlib import Path

DAGS_SUBDIR = "dags"
DAG_IDS = ("ml_training_pipeline", "platform_selfcheck")


def template_dir() -> Path:
    """The template folder (the DAG repository root)."""
    return Path(__file__).resolve().parent / "template"
