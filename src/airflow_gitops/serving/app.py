"""The HTTP API: /predict, /invocations, /health, /model, /metrics, and MLflow's webhook.

``create_app(config)`` builds one app with its own Prometheus registry and its own watcher thread
(started with the app, stopped with it).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from . import DEFAULT_WEBHOOK_NAME, WEBHOOK_PATH
from .fetcher import Fetcher
from .model import BadInput
from .watcher import Served, Watcher

log = logging.getLogger("airflow_gitops.serving")
MAX_RECORDS = 10_000


@dataclass(frozen=True)
class Config:
    model: str
    alias: str = "champion"
    poll_interval: float = 10.0
    max_body_bytes: int = 1_048_576
    webhook_secret: str | None = None  # None: no webhook endpoint (polling only)
    webhook_url: str | None = None  # given: register it with MLflow at start (and after a registry outage)
    webhook_name: str = DEFAULT_WEBHOOK_NAME
    fetch_in_worker: bool = True  # download + first check of a new version in a worker process (fetcher.py)


def create_app(config: Config, client=None) -> FastAPI:
    from mlflow.tracking import MlflowClient
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    client = client or MlflowClient()
    served = Served(config.model, config.alias)
    reg = CollectorRegistry()
    requests_total = Counter(
        "serving_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=reg
    )
    latency = Histogram(
        "serving_request_seconds",
        "Request latency by endpoint",
        ["endpoint"],
        registry=reg,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    errors = Counter("serving_errors", "Requests that failed, by kind", ["kind"], registry=reg)
    version_g = Gauge("serving_model_version", "The served model version (0: none)", registry=reg)
    swaps = Counter("serving_swaps", "Model swaps and refused versions", ["result"], registry=reg)
    webhooks = Counter("serving_webhooks", "Webhook deliveries by result", ["result"], registry=reg)

    def on_swap(old, new):
        swaps.labels("swapped").inc()
        try:
            version_g.set(float(new.version))
        except ValueError:
            version_g.set(-1)

    def register_webhook():
        if config.webhook_url and config.webhook_secret:
            from .webhook import ensure_webhook

            try:
                state["webhook_id"] = ensure_webhook(
                    client, config.webhook_name, config.webhook_url, config.webhook_secret
                )
                log.info("serving: webhook %r registered for %s", config.webhook_name, config.webhook_url)
                return True
            except Exception as exc:  # noqa: BLE001 - polling still works; retried at the next look
                log.warning(
                    "serving: could not register the webhook (%s); polling every %.0f s", exc, config.poll_interval
                )
        return False

    state: dict[str, Any] = {"webhook_registered": False, "webhook_id": None}

    def unregister_webhook():
        # A webhook left behind by a stopped server is not harmless: MLflow keeps delivering to it, each
        # delivery retrying a refused connection with backoff (~7 s) in its shared pool of 10 workers,
        # so a few stale ones delay every live server's deliveries by many seconds.
        hook_id = state.get("webhook_id")
        if not hook_id:
            return
        try:
            client.delete_webhook(hook_id)
            log.info("serving: webhook %r removed", config.webhook_name)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway; the next start replaces it by name
            log.warning("serving: could not remove the webhook %r (%s)", config.webhook_name, exc)

    def on_start():
        """True once there is nothing left to do at start (registered, or no webhook to register)."""
        state["webhook_registered"] = register_webhook()
        return state["webhook_registered"] or not (config.webhook_url and config.webhook_secret)

    fetcher = Fetcher(client.tracking_uri) if config.fetch_in_worker else None
    watcher = Watcher(
        served,
        client,
        config.poll_interval,
        on_swap=on_swap,
        on_refuse=lambda v, r: swaps.labels("refused").inc(),
        on_start=on_start,
        fetcher=fetcher,
    )

    @asynccontextmanager
    async def lifespan(app):
        if fetcher:
            fetcher.start()
        watcher.start()
        yield
        watcher.stop()
        await run_in_threadpool(watcher.thread.join, 5)  # its registration, if under way, finishes first
        await run_in_threadpool(unregister_webhook)
        if fetcher:
            await run_in_threadpool(fetcher.close)

    app = FastAPI(title="airflow-gitops serving", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.watcher, app.state.config = served, watcher, config
    app.state.fetcher = fetcher

    def reply(endpoint: str, started: float, status: int, body: Any, headers=None) -> JSONResponse:
        requests_total.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - started)
        if status >= 400:
            errors.labels("client" if status < 500 else "server").inc()
        return JSONResponse(body, status_code=status, headers=headers)

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_body_bytes:
            raise BadInput(413, f"body of {int(length)} bytes is over the limit of {config.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise BadInput(413, f"body is over the limit of {config.max_body_bytes} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise BadInput(400, "empty body: send JSON records")

        def no_constants(name):
            raise BadInput(422, f"{name} is not a number: only finite numbers are accepted")

        try:
            return json.loads(raw, parse_constant=no_constants)
        except BadInput:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(400, f"malformed JSON: {exc}") from None

    async def predict_with(endpoint: str, request: Request, to_records) -> JSONResponse:
        started = time.perf_counter()
        model = served.current  # read ONCE: this request is answered by this model, whatever swaps meanwhile
        if model is None:
            return reply(endpoint, started, 503, {"error": served.report()["reason"], **_brief(served)})
        try:
            records = to_records(await read_json(request))
            if isinstance(records, list) and len(records) > MAX_RECORDS:
                raise BadInput(413, f"{len(records)} records is over the limit of {MAX_RECORDS} per request")
            predictions = await run_in_threadpool(model.predict, records)
        except BadInput as exc:
            return reply(endpoint, started, exc.status, {"error": exc.message})
        except Exception as exc:  # noqa: BLE001 - the model failed on valid input: a server error, reported
            log.exception("serving: v%s failed to predict", model.version)
            return reply(endpoint, started, 500, {"error": f"the model failed to predict: {type(exc).__name__}: {exc}"})
        headers = {"X-Model-Version": model.version}
        return reply(
            endpoint, started, 200, {"predictions": predictions, "model": model.name, "version": model.version}, headers
        )

    @app.post("/predict")
    async def predict(request: Request):
        """A list of records, or ``{"records": [...]}``."""
        return await predict_with("predict", request, _records)

    @app.post("/invocations")
    async def invocations(request: Request):
        """MLflow's scoring format: ``dataframe_records``, ``dataframe_split``, ``instances`` or ``inputs``."""
        return await predict_with("invocations", request, _mlflow_records)

    @app.get("/health")
    async def health():
        rep = served.report()
        rep["webhook"] = _webhook_state(config, state)
        return JSONResponse(rep, status_code=200 if rep["ready"] else 503)

    @app.get("/model")
    async def model_info():
        cur = served.current
        rep = served.report()
        rep["webhook"] = _webhook_state(config, state)
        rep["served"] = cur.describe() if cur else None
        if cur:
            try:  # what to send it (the input example it was checked on): `airflow-gitops predict` uses it
                rep["served"]["example"] = cur.example_records()[:5]
            except BadInput:
                rep["served"]["example"] = None
        rep["swaps"] = served.swaps
        return JSONResponse(rep, status_code=200 if cur else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.post(WEBHOOK_PATH)
    async def webhook(request: Request):
        from .webhook import verify

        raw = await request.body()
        if not config.webhook_secret:
            webhooks.labels("refused").inc()
            return JSONResponse({"error": "webhooks are not configured on this server"}, status_code=404)
        why = verify(config.webhook_secret, dict(request.headers), raw)
        if why:
            webhooks.labels("refused").inc()
            log.warning(
                "serving: refused a webhook delivery from %s: %s", request.client.host if request.client else "?", why
            )
            return JSONResponse({"error": f"refused: {why}"}, status_code=401)
        try:
            event = json.loads(raw)
            data = event.get("data") or {}
        except (ValueError, AttributeError):
            webhooks.labels("bad").inc()
            return JSONResponse({"error": "the signed payload is not a JSON object"}, status_code=400)
        ours = data.get("name") == config.model and data.get("alias") == config.alias
        webhooks.labels("accepted" if ours else "ignored").inc()
        if ours:
            log.info("serving: webhook: %s@%s -> v%s", config.model, config.alias, data.get("version"))
            watcher.wake()
        return JSONResponse({"accepted": ours})

    return app


def _brief(served: Served) -> dict[str, Any]:
    rep = served.report()
    return {k: rep[k] for k in ("model", "alias", "alias_version", "refused", "registry")}


def _webhook_state(config: Config, state: dict) -> str:
    if not config.webhook_secret:
        return "off (polling only)"
    if config.webhook_url:
        return "registered" if state["webhook_registered"] else "not registered yet (polling meanwhile)"
    return "accepting (registered by the platform)"


def _records(body: Any) -> Any:
    if isinstance(body, dict):
        if "records" in body:
            return body["records"]
        raise BadInput(400, 'send a list of records, or {"records": [...]}')
    return body


def _mlflow_records(body: Any) -> Any:
    if not isinstance(body, dict):
        raise BadInput(
            400, "MLflow's format is a JSON object with one of: dataframe_records, dataframe_split, instances, inputs"
        )
    keys = [k for k in ("dataframe_records", "dataframe_split", "instances", "inputs") if k in body]
    if len(keys) != 1:
        raise BadInput(400, "give exactly one of dataframe_records, dataframe_split, instances, inputs")
    value = body[keys[0]]
    if keys[0] == "dataframe_split":
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("columns"), list)
            or not isinstance(value.get("data"), list)
        ):
            raise BadInput(400, 'dataframe_split needs {"columns": [...], "data": [[...], ...]}')
        cols = value["columns"]
        out = []
        for i, row in enumerate(value["data"]):
            if not isinstance(row, list) or len(row) != len(cols):
                raise BadInput(422, f"dataframe_split row {i} does not have {len(cols)} values")
            out.append(dict(zip(cols, row, strict=True)))
        return out
    return value
