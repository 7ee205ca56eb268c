"""Channel senders: each turns one delivery into one provider call and an honest result.

`accepted` means the provider answered that it took the message (HTTP 2xx, SMTP 250);
nothing else is ever recorded as sent. `retry` is a failure worth trying again (timeouts,
429, 5xx, SMTP 4xx); `failed` will not get better by retrying (bad address, 4xx,
channel not configured).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fusion_prime.alerts.domain import Channel
from fusion_prime.alerts.messages import Message
from fusion_prime.platform.outbound import HttpOutcome

Outcome = Literal["accepted", "retry", "failed"]


@dataclass(frozen=True)
class Delivery:
    notification_id: uuid.UUID
    event_id: uuid.UUID | None
    channel: Channel
    address: str
    secret: str | None  # webhook signing secret, or the Slack URL
    message: Message
    payload: dict[str, object]
    attempt: int


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    latency_ms: int
    code: int | None = None  # HTTP status or SMTP reply code
    response: str | None = None  # SMTP reply text, provider message id
    error: str | None = None
    retry_after: float | None = None
    provider_ref: str | None = None


Sender = Callable[[Delivery], Awaitable[Result]]

# HTTP answers that a retry will not change (the request itself is wrong)
_PERMANENT = frozenset({400, 401, 403, 404, 405, 410, 413, 422})


def from_http(out: HttpOutcome, provider_ref: str | None = None) -> Result:
    if out.ok:
        return Result("accepted", out.duration_ms, out.status_code, provider_ref, None)
    if out.status_code in _PERMANENT:
        outcome: Outcome = "failed"
    else:
        outcome = "retry"
    return Result(
        outcome,
        out.duration_ms,
        out.status_code,
        out.body or None,
        out.error,
        retry_after=out.retry_after,
    )


def not_configured(what: str) -> Result:
    return Result("failed", 0, error=f"channel not configured: {what}")
