"""Finding the programs the platform runs: the ones this virtual environment installed first."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def venv_bin(name: str) -> str:
    """``name`` from this interpreter's ``bin/`` (airflow, supervisord, rclone ...), else from PATH.

    The venv's copy wins so that every process runs the versions of ``uv.lock``, also when the CLI
    is called by its full path without an activated environment.
    """
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    return shutil.which(name) or name
