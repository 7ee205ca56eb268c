"""Outbound HTTP deliveries: one POST, timed, every failure turned into a recorded outcome.

Shared by settlement's webhooks and the alert channels so both classify answers, time
requests and read Retry-After the same way.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx

from fusion_prime.platform.signing import SIGNATURE_HEADER, sign_header
from fusion_prime.platform.targets import (
    GuardedResolver,
    TargetPolicy,
    check_before_connecting,
)


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


def signed_headers(secret: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The platform's webhook signature header for `body`, timestamped `now` (Unix
    seconds; this process's clock when not given)."""
    at = time.time() if now is None else now
    return {SIGNATURE_HEADER: sign_header(secret, int(at), body)}


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
        return _failed(exc, started)
    return _answered(
        started,
        response.status_code,
        response.headers.get("content-type", ""),
        response.headers.get("retry-after"),
        response.text,
    )


def _failed(exc: Exception, started: float) -> HttpOutcome:
    duration = int((time.perf_counter() - started) * 1000)
    return HttpOutcome(None, f"{type(exc).__name__}: {exc}"[:500], duration)


def _answered(
    started: float, status: int, content_type: str, retry_after: str | None, text: str
) -> HttpOutcome:
    """An answer as an outcome: 2xx or `HTTP <status>`, Retry-After, the start of the
    body, and the body parsed when it says it is JSON."""
    duration = int((time.perf_counter() - started) * 1000)
    parsed: Any = None
    if "json" in content_type:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return HttpOutcome(
        status,
        None if 200 <= status < 300 else f"HTTP {status}",
        duration,
        retry_after_seconds(retry_after),
        text[:500],
        parsed,
    )


class ClientPool:
    """Outbound POSTs to many customer endpoints at once, over aiohttp: one session whose
    connector keeps up to `concurrency` keep-alive connections, reused per host.

    httpx's per-request cost capped the alert deliveries (bench/alerts.py: ~360/s
    against a 50 ms endpoint at concurrency 100, most of it in httpcore's pool); the same
    workload through aiohttp is what the oracle already measured as far cheaper. Redirects
    are not followed and no cookies are kept (as with httpx's defaults).
    """

    MAX_BODY = 64 * 1024  # of an answer, read for the attempt log (the rest is dropped)

    def __init__(
        self, concurrency: int, timeout: float, *, policy: TargetPolicy | None = None
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        # user-given targets: the URL's shape checked on every POST and every new
        # connection's addresses checked by the resolver (platform/targets.py)
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running loop, on first use
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                limit_per_host=0,
                keepalive_timeout=30,
                # no DNS cache: every new connection resolves and is checked again
                use_dns_cache=self.policy is None,
                resolver=GuardedResolver(self.policy) if self.policy is not None else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def post(
        self,
        url: str,
        *,
        timeout: float,
        content: bytes | None = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> HttpOutcome:
        """One POST, timed; every failure is an outcome to record, never a raise."""
        if basic_auth is not None:
            token = base64.b64encode(":".join(basic_auth).encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {token}"}
        started = time.perf_counter()
        try:
            if self.policy is not None:
                await check_before_connecting(url, self.policy)
            async with self._client().post(
                url,
                data=content if content is not None else data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(self.MAX_BODY)
                status = response.status
                content_type = response.headers.get("content-type", "")
                retry_after = response.headers.get("retry-after")
        except Exception as exc:  # every failure is an attempt to record, never a crash
            return _failed(exc, started)
        return _answered(started, status, content_type, retry_after, raw.decode("utf-8", "replace"))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
