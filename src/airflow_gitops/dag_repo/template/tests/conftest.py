"""Make DAG parsing in CI hermetic: a throw-away AIRFLOW_HOME, no example DAGs, dags/ importable."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"

# Must happen before anything imports airflow: Airflow reads its configuration at import time.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="dag-integrity-airflow-home-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
# The platform puts the bundle's dags/ folder on sys.path: shared helpers (mlops_common) import the same way here.
if str(DAGS_DIR) not in sys.path:
    sys.path.insert(0, str(DAGS_DIR))
