"""MLflow registry webhooks: verify a delivery's HMAC signature, register our endpoint.

MLflow signs ``f"{delivery_id}.{timestamp}.{payload}"`` with HMAC-SHA256 and sends
``X-MLflow-Signature: v1,<base64>`` (``mlflow/webhooks/delivery.py``); the header names are imported from
``mlflow.webhooks.constants`` so a rename fails loudly here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

MAX_SKEW_S = 300  # a delivery older (or newer) than this is refused: a replayed one
EVENT = "model_version_alias.created"


def headers() -> tuple[str, str, str]:
    from mlflow.webhooks.constants import (
        WEBHOOK_DELIVERY_ID_HEADER,
        WEBHOOK_SIGNATURE_HEADER,
        WEBHOOK_TIMESTAMP_HEADER,
    )

    return WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER, WEBHOOK_DELIVERY_ID_HEADER


def sign(secret: str, delivery_id: str, timestamp: str, payload: bytes) -> str:
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + payload
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, got: dict[str, str], payload: bytes, now: float | None = None) -> str | None:
    """None when the delivery is authentic; otherwise why it is refused."""
    sig_h, ts_h, id_h = headers()
    lower = {k.lower(): v for k, v in got.items()}
    signature, timestamp, delivery = (lower.get(h.lower()) for h in (sig_h, ts_h, id_h))
    if not (signature and timestamp and delivery):
        return f"missing {sig_h}, {ts_h} or {id_h} header"
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return f"{ts_h} is not a Unix timestamp"
    if age > MAX_SKEW_S:
        return f"{ts_h} is {age:.0f} s away from now (more than {MAX_SKEW_S} s: a replay?)"
    if not hmac.compare_digest(sign(secret, delivery, timestamp, payload), signature):
        return "bad signature"
    return None


def ensure_webhook(client, name: str, url: str, secret: str) -> str:
    """Create (or re-create, with this URL and secret) the webhook ``name``; its id."""
    from mlflow.entities.webhook import WebhookEvent

    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for hook in page:
            if hook.name == name:
                client.delete_webhook(hook.webhook_id)
        token = page.token
        if not token:
            break
    hook = client.create_webhook(
        name=name,
        url=url,
        events=[WebhookEvent.from_str(EVENT)],
        description="airflow-gitops serving: reload when the served alias moves",
        secret=secret,
    )
    return hook.webhook_id
