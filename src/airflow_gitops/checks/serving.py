"""``verify``'s serving rows: the server serves the version the alias points at, and a prediction through
its API equals the model's own prediction (the model loaded here, from the registry, not by the server).

The same rows for any target: given the server's URL and the environment DAG code gets (MLflow, AWS).
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from ..local.environment import environ_overlay
from .result import CheckResult, fail, ok, skip, warn

SWAP_WAIT_S = 15  # an alias that just moved: the server loads and checks the new version first


def serving_rows(url: str, env: dict[str, str], *, name: str = "verify.serving") -> list[CheckResult]:
    fix_log = "read its log: `airflow-gitops logs serving`"
    rep = _health(url)
    if rep is None:
        return [fail(name, f"nothing answers at {url}/health", f"{fix_log}; `airflow-gitops up` restarts it")]
    deadline = time.monotonic() + SWAP_WAIT_S
    while _swapping(rep) and time.monotonic() < deadline:
        time.sleep(0.5)
        rep = _health(url) or rep
    model, alias = rep.get("model"), rep.get("alias")
    served, alias_version = rep.get("served_version"), rep.get("alias_version")
    refused = {r["version"]: r["reason"] for r in rep.get("refused") or []}
    if str(rep.get("registry", "ok")) != "ok":
        return [
            fail(
                name,
                f"the server cannot reach MLflow's registry: {rep['registry']}"
                + (f" (still serving v{served})" if served else ""),
                "check MLflow: `airflow-gitops logs mlflow`; the server follows the alias again once it answers",
            )
        ]
    if alias_version is None:
        return [
            skip(
                name,
                f"no model to serve yet: {model}@{alias} is not set ({rep.get('reason')})",
                "run the pipeline: `airflow-gitops run ml_training_pipeline` (it registers and promotes one)",
            )
        ]
    if alias_version in refused:
        row = warn if served else fail
        return [
            row(
                name,
                f"{model}@{alias} -> v{alias_version} was refused: {refused[alias_version]}"
                + (f"; v{served} keeps serving" if served else "; nothing is served"),
                f"fix the model and register a new version, or move @{alias} back to a good one; {fix_log}",
            )
        ]
    if served != alias_version:
        return [
            fail(name, f"serves v{served} but {model}@{alias} -> v{alias_version} (after {SWAP_WAIT_S} s)", fix_log)
        ]
    return [
        ok(name, f"serves {model} v{served} = @{alias} ({rep.get('webhook')})"),
        _prediction(url, model, served, env, f"{name}.prediction"),
    ]


def _health(url: str) -> dict[str, Any] | None:
    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None


def _swapping(rep: dict[str, Any]) -> bool:
    alias_version = rep.get("alias_version")
    refused = {r["version"] for r in rep.get("refused") or []}
    return bool(alias_version) and rep.get("served_version") != alias_version and alias_version not in refused


def _prediction(url: str, model: str, version: str, env: dict[str, str], name: str) -> CheckResult:
    """The model's input example (or one row from its signature) through ``POST /predict``, compared with
    what the model predicts when loaded here."""
    from ..serving.model import to_json

    try:
        with environ_overlay(env):
            import mlflow.pyfunc

            loaded = mlflow.pyfunc.load_model(f"models:/{model}/{version}")
            frame = _example_frame(loaded)
            own = to_json(loaded.predict(frame))
    except Exception as exc:  # noqa: BLE001 - any failure to load is the row's finding
        return fail(
            name,
            f"could not load {model} v{version} here to compare: {type(exc).__name__}: {exc}"[:400],
            "check MLflow and the S3 endpoint (`airflow-gitops doctor`)",
        )
    records = [{k: _plain_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    try:
        r = httpx.post(f"{url}/predict", json=records, timeout=30)
    except httpx.HTTPError as exc:
        return fail(name, f"POST {url}/predict failed: {exc}", "read its log: `airflow-gitops logs serving`")
    if r.status_code != 200:
        return fail(
            name,
            f"POST /predict answered {r.status_code}: {r.text[:200]}",
            "read its log: `airflow-gitops logs serving`",
        )
    got = r.json().get("predictions")
    if not _same(got, own):
        return fail(
            name,
            f"the server predicted {got!r:.200} but the model itself predicts {own!r:.200}",
            "read its log: `airflow-gitops logs serving`",
        )
    return ok(name, f"{len(records)} row(s) through /predict = the model's own prediction ({own!r:.80})")


def _example_frame(loaded):
    import pandas as pd

    example = getattr(loaded, "input_example", None)
    if isinstance(example, pd.DataFrame) and len(example):
        return example
    schema = loaded.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise ValueError("the model has neither an input example nor a column signature")
    fill = {"double": 0.5, "float": 0.5, "long": 1, "integer": 1, "boolean": True, "string": "a"}
    dtypes = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}
    cols = {s.name: pd.Series([fill.get(s.type.name, 0)], dtype=dtypes.get(s.type.name)) for s in schema.inputs}
    return pd.DataFrame(cols)


def _plain_value(v):
    return v.item() if hasattr(v, "item") else v


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b
