"""Outbound HTTP deliveries: one POST, timed, every failure turned into a recorded outcome.

Shared by settlement's webhooks and the alert channels so both classify answers, time
requests and read Retry-After the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from fusion_prime.platform.signing import SIGNATURE_HEADER, sign_header
from fusion_prime.platform.targets import TargetPolicy, guarded_client


@dataclass(frozen=True)
class HttpOutcome:
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None
    body: str = ""  # the start of the answer, for the attempt log
    json: Any = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    """The platform's webhook signature header for `body`, timestamped now."""
    return {SIGNATURE_HEADER: sign_header(secret, int(time.time()), body)}


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    content: bytes | None = None,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | None = None,
) -> HttpOutcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            url,
            content=content,
            data=data,
            headers=headers,
            auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
            timeout=timeout,
        )
    except Exception as exc:  # every failure is an attempt to record, never a crash
        duration = int((time.perf_counter() - started) * 1000)
        return HttpOutcome(None, f"{type(exc).__name__}: {exc}"[:500], duration)
    duration = int((time.perf_counter() - started) * 1000)
    status = response.status_code
    parsed: Any = None
    if "json" in response.headers.get("content-type", ""):
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
    return HttpOutcome(
        status,
        None if 200 <= status < 300 else f"HTTP {status}",
        duration,
        retry_after_seconds(response.headers.get("retry-after")),
        response.text[:500],
        parsed,
    )


class ClientPool:
    """Several httpx clients used round-robin, each with a few connections.

    httpcore scans every connection of its pool on each request, so one client with a
    hundred connections spends its time there: in bench/alerts.py one client with 100
    connections made ~90 requests/s against a 50 ms endpoint where ten clients of ten
    made ~290/s on the same machine.
    """

    def __init__(
        self,
        concurrency: int,
        timeout: float,
        per_client: int = 10,
        *,
        policy: TargetPolicy | None = None,
    ) -> None:
        n = max(1, -(-concurrency // per_client))
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        # user-given targets: every connection checked (platform/targets.py), no redirects
        self.clients = [
            guarded_client(policy, timeout=timeout, limits=limits)
            if policy is not None
            else httpx.AsyncClient(timeout=timeout, limits=limits)
            for _ in range(n)
        ]
        self._i = 0

    def next(self) -> httpx.AsyncClient:
        self._i = (self._i + 1) % len(self.clients)
        return self.clients[self._i]

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
