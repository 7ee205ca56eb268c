"""Slack incoming webhooks: a POST of {"text": ...} to the recipient's hook URL.

The URL is the credential (anyone holding it can post), so it is stored encrypted and
shown masked; Slack answers 200 "ok", 429 with Retry-After, 4xx for a dead hook."""

from __future__ import annotations

import json

from fusion_prime.alerts.channels import Delivery, Result, from_http, not_configured
from fusion_prime.platform import outbound


def text(d: Delivery) -> str:
    return f"*{d.message.subject}*\n```{d.message.text.strip()}```"


class SlackSender:
    def __init__(self, clients: outbound.ClientPool, timeout: float) -> None:
        self.clients = clients
        self.timeout = timeout

    async def __call__(self, d: Delivery) -> Result:
        if not d.secret:
            return not_configured("the Slack hook URL cannot be read")
        content = json.dumps({"text": text(d)}).encode()
        out = await self.clients.post(
            d.secret,
            content=content,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        )
        return from_http(out)
