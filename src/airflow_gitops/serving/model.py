"""One loaded model version: load it, check it, validate requests against its signature, predict.

A :class:`LoadedModel` is immutable once built; the server swaps whole objects, so a request that took
one keeps it to the end (see ``watcher.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


class BadInput(ValueError):
    """A request the model cannot take: ``status`` (400/413/422) and one message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# MLflow DataType name -> (JSON kinds accepted, numpy dtype name for the column)
_NUMERIC = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # MLflow DataType name: double, float, long, integer, boolean, string, ...
    required: bool = True


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    run_id: str | None
    git_commit: str | None
    model: Any = field(repr=False)  # mlflow.pyfunc.PyFuncModel
    columns: tuple[Column, ...] | None  # None: the model has no column signature (no validation)
    loaded_at: float
    load_seconds: float
    check_seconds: float
    local_dir: str | None = None  # where the fetch worker downloaded it (None: MLflow's own temp folder)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "git_commit": self.git_commit,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
            "check_seconds": round(self.check_seconds, 3),
            "inputs": [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns or ()],
        }

    # --- requests -------------------------------------------------------------------------------------
    def frame(self, records: list[Any]):
        """Records (a list of JSON objects) -> a DataFrame in the signature's column order and types."""
        import pandas as pd

        if not isinstance(records, list):
            raise BadInput(400, "the body must hold a list of records (JSON objects), one per row")
        if not records:
            raise BadInput(400, "empty batch: send at least one record")
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise BadInput(422, f"record {i} is a {type(rec).__name__}, expected a JSON object of column: value")
        if self.columns is None:
            return pd.DataFrame.from_records(records)
        known = {c.name for c in self.columns}
        for i, rec in enumerate(records):
            unknown = sorted(set(rec) - known)
            if unknown:
                raise BadInput(422, f"record {i}: unknown column {unknown[0]!r} (the model takes: {_names(self)})")
            for col in self.columns:
                if col.name not in rec or rec[col.name] is None:
                    if col.required:
                        raise BadInput(422, f"record {i}: missing column {col.name!r} ({col.type})")
                    continue
                _check_value(i, col, rec[col.name])
        data = {}
        for col in self.columns:
            values = [rec.get(col.name) for rec in records]
            dtype = _NUMERIC.get(col.type)
            if dtype and all(v is not None for v in values):
                data[col.name] = pd.Series(values, dtype=dtype)
            elif col.type == "boolean" and all(v is not None for v in values):
                data[col.name] = pd.Series(values, dtype=bool)
            else:
                data[col.name] = pd.Series(values, dtype=object)
        return pd.DataFrame(data)

    def predict(self, records: list[Any]) -> list[Any]:
        return to_json(self.model.predict(self.frame(records)))

    def example_records(self) -> list[dict[str, Any]]:
        """The model's input example as records; without one, one row built from the signature."""
        example = getattr(self.model, "input_example", None)
        if example is not None:
            try:
                import pandas as pd

                if isinstance(example, pd.DataFrame):
                    return _plain_records(example)
                if isinstance(example, dict):
                    return _plain_records(pd.DataFrame(example))
                if isinstance(example, list) and example and isinstance(example[0], dict):
                    return example
            except Exception:  # noqa: BLE001 - an odd example falls back to the signature below
                pass
        if not self.columns:
            raise BadInput(422, "the model has neither an input example nor a column signature to check it with")
        fill = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": ""}
        return [{c.name: fill.get(c.type, 0) for c in self.columns}]


def _names(m: LoadedModel) -> str:
    return ", ".join(c.name for c in m.columns or ())


def _check_value(i: int, col: Column, value: Any) -> None:
    where = f"record {i}: column {col.name!r}"
    if col.type in _NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadInput(422, f"{where} must be a number ({col.type}), got {type(value).__name__} {value!r:.40}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(422, f"{where} is {value}: only finite numbers are accepted")
        if col.type in ("long", "integer") and isinstance(value, float) and not value.is_integer():
            raise BadInput(422, f"{where} must be an integer ({col.type}), got {value}")
    elif col.type == "boolean" and not isinstance(value, bool):
        raise BadInput(422, f"{where} must be true or false, got {type(value).__name__}")
    elif col.type == "string" and not isinstance(value, str):
        raise BadInput(422, f"{where} must be a string, got {type(value).__name__}")


def _plain_records(frame) -> list[dict[str, Any]]:
    import json

    return json.loads(frame.to_json(orient="records"))


def to_json(predictions: Any) -> list[Any]:
    """numpy / pandas predictions -> plain JSON values."""
    import json

    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return json.loads(predictions.to_json(orient="records"))
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    if isinstance(predictions, np.ndarray):
        return predictions.tolist()
    if isinstance(predictions, list):
        return predictions
    return [predictions]


def columns_of(pyfunc_model) -> tuple[Column, ...] | None:
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return None
    out = []
    for spec in schema.inputs:
        kind = getattr(spec, "type", None)
        out.append(Column(spec.name, getattr(kind, "name", str(kind)), getattr(spec, "required", True)))
    return tuple(out)


def check(candidate: LoadedModel) -> tuple[list[dict[str, Any]], list[Any]]:
    """Predict on the model's input example; raises when it cannot or predicts nonsense."""
    example = candidate.example_records()
    out = candidate.predict(example)
    if len(out) != len(example):
        raise ValueError(f"it returned {len(out)} predictions for {len(example)} example rows")
    for v in out:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"it predicted {v} on its input example")
    return example, out


def load_version(client, name: str, version: str, fetched: dict[str, Any] | None = None) -> LoadedModel:
    """Load ``models:/name/version`` and check it predicts on its input example; raises on any failure.

    ``fetched``: the version was downloaded and checked by the fetch worker (``fetcher.py``): load it from
    that folder and check that it predicts here what it predicted there."""
    import mlflow.pyfunc

    started = time.monotonic()
    mv = client.get_model_version(name, version)
    pyfunc_model = mlflow.pyfunc.load_model(fetched["path"] if fetched else f"models:/{name}/{version}")
    loaded = time.monotonic()
    commit = (mv.tags or {}).get("git.commit")
    if not commit and mv.run_id:
        try:
            commit = client.get_run(mv.run_id).data.tags.get("git.commit")
        except Exception:  # noqa: BLE001 - the commit is information, not a reason to refuse the model
            commit = None
    candidate = LoadedModel(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        git_commit=commit,
        model=pyfunc_model,
        columns=columns_of(pyfunc_model),
        loaded_at=time.time(),
        load_seconds=(fetched["seconds"] if fetched else 0.0) + loaded - started,
        check_seconds=0.0,
        local_dir=fetched["dir"] if fetched else None,
    )
    _, out = check(candidate)
    if fetched and out != fetched["predictions"]:
        raise ValueError(
            f"it predicts {out!r:.200} on its input example here but {fetched['predictions']!r:.200} in the worker"
        )
    return _replace_check(candidate, time.monotonic() - loaded)


def fetch_and_check(tracking_uri: str | None, name: str, version: str, dest: str) -> dict[str, Any]:
    """In the fetch worker: download the version into ``dest``, load it, check it. Never raises: a
    failure comes back as ``{"error": ..., "unreachable": ...}`` (exceptions do not all pickle)."""
    started = time.monotonic()
    try:
        import mlflow.artifacts
        import mlflow.pyfunc

        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=dest, tracking_uri=tracking_uri
        )
        pyfunc_model = mlflow.pyfunc.load_model(path)
        candidate = LoadedModel(name, str(version), None, None, pyfunc_model, columns_of(pyfunc_model), 0.0, 0.0, 0.0)
        _, out = check(candidate)
        return {"path": path, "predictions": out, "seconds": time.monotonic() - started}
    except BaseException as exc:  # noqa: BLE001 - every failure is the answer
        return {"error": short_error(exc), "unreachable": looks_unreachable(exc)}


class Relayed(Exception):
    """A failure the fetch worker reported: its own one-line reason, and whether the registry was unreachable."""

    def __init__(self, reason: str, unreachable: bool = False):
        super().__init__(reason)
        self.reason, self.unreachable = reason, unreachable


def short_error(exc: BaseException) -> str:
    if isinstance(exc, Relayed):
        return exc.reason
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def looks_unreachable(exc: BaseException) -> bool:
    """The registry or its artifact store did not answer (not the model's fault: try again later)."""
    import requests

    if isinstance(exc, Relayed):
        return exc.unreachable
    seen = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | ConnectionError | TimeoutError):
            return True
        text = str(seen)
        if "Max retries exceeded" in text or "Connection refused" in text or "EndpointConnectionError" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _replace_check(m: LoadedModel, seconds: float) -> LoadedModel:
    from dataclasses import replace

    return replace(m, check_seconds=seconds)
