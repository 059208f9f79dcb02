"""``airflow-gitops predict``: ask the local serving component for a prediction (the served model's own
input example when no records are given) and print its answer."""

from __future__ import annotations

import json
import sys

import httpx
from rich.console import Console

from ..errors import PlatformError
from .parts import Running

LOG_FIX = "read its log: `airflow-gitops logs serving`"


def predict(platform: Running, records: str | None, console: Console) -> dict:
    url = platform.layout.serving_url
    if url is None:
        raise PlatformError(
            "serving is off (serving.enabled: false in platform.yaml)",
            "set serving.enabled: true and run `airflow-gitops up`",
        )
    if not platform.is_running():
        raise PlatformError("the platform is not running", "start it: `airflow-gitops up`")
    body = _records(records) if records is not None else _example(url)
    try:
        r = httpx.post(f"{url}/predict", json=body, timeout=60)
    except httpx.HTTPError as err:
        raise PlatformError(f"the serving component at {url} does not answer ({err})", LOG_FIX) from None
    answer = _json(r)
    if r.status_code != 200:
        raise PlatformError(
            f"the serving component refused the request ({r.status_code}): {answer.get('error', r.text[:300])}",
            f"send a JSON list of records with the model's columns (`curl {url}/model` lists them)"
            if r.status_code < 500
            else LOG_FIX,
        )
    console.print_json(data=answer)
    return answer


def _records(text: str):
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PlatformError(
            f"the records are not valid JSON: {err}",
            "pass a JSON list of records, e.g. '[{\"mean radius\": 14.1, ...}]', or - for stdin",
        ) from None


def _example(url: str):
    try:
        r = httpx.get(f"{url}/model", timeout=10)
    except httpx.HTTPError as err:
        raise PlatformError(f"the serving component at {url} does not answer ({err})", LOG_FIX) from None
    info = _json(r)
    served = info.get("served")
    if r.status_code != 200 or not served:
        raise PlatformError(
            f"nothing is served yet: {info.get('reason') or r.text[:300]}",
            "train and promote a model: `airflow-gitops run ml_training_pipeline`",
        )
    if not served.get("example"):
        raise PlatformError(
            f"{served['name']} v{served['version']} has no input example to send",
            "pass records: `airflow-gitops predict '[{...}]'`",
        )
    return served["example"]


def _json(r: httpx.Response) -> dict:
    try:
        value = r.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
