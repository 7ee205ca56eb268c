"""Customer webhooks, signed with the platform's scheme (platform/signing.py), like
settlement's. The notification id is the idempotency key: the same on every retry."""

from __future__ import annotations

import json
from collections.abc import Callable

from fusion_prime.alerts.channels import Delivery, Result, from_http
from fusion_prime.platform import outbound

DELIVERY_ID_HEADER = "Fusion-Prime-Delivery-Id"
EVENT_ID_HEADER = "Fusion-Prime-Event-Id"


def body(d: Delivery) -> bytes:
    return json.dumps(
        {
            "id": str(d.notification_id),
            "type": "alert.notification",
            "subject": d.message.subject,
            "text": d.message.text,
            **d.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    ).encode()


class WebhookSender:
    def __init__(
        self, clients: outbound.ClientPool, timeout: float, clock: Callable[[], float]
    ) -> None:
        self.clients = clients
        self.timeout = timeout
        self.clock = clock  # Unix seconds for the signature (the database's clock)

    async def __call__(self, d: Delivery) -> Result:
        content = body(d)
        headers = {
            "Content-Type": "application/json",
            DELIVERY_ID_HEADER: str(d.notification_id),
            EVENT_ID_HEADER: str(d.event_id or ""),
        }
        if d.secret:
            headers.update(outbound.signed_headers(d.secret, content, now=self.clock()))
        out = await self.clients.post(
            d.address, content=content, headers=headers, timeout=self.timeout
        )
        return from_http(out)
