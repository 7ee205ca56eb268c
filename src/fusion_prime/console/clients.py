"""The console's only way to data: each service's HTTP API (and the dev mail inbox)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from fusion_prime.console import idtokens
from fusion_prime.console.settings import SERVICES, ConsoleSettings

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """One API answer: `data` when 2xx, else `error` (what the page says instead)."""

    service: str
    path: str
    status: int | None
    data: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def missing(self) -> bool:
        return self.status == 404


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str):
            return f"HTTP {response.status_code}: {detail}"
    return f"HTTP {response.status_code}"


class ServiceClients:
    def __init__(
        self, settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None
    ):
        self.urls = settings.base_urls()
        if settings.mail_url:
            self.urls["mail"] = settings.mail_url
        self._key = settings.api_key.get_secret_value() if settings.api_key else None
        self.http = httpx.AsyncClient(
            timeout=settings.request_timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        )
        # only the five services sit behind Cloud Run's IAM (not the dev mail inbox)
        self._id_tokens = idtokens.IdTokens() if settings.serverless_auth else None
        self.aggregate_ttl = settings.aggregate_ttl
        self._cache: dict[str, tuple[float, datetime, Any]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self.http.aclose()

    async def aggregate(self, key: str, fetch: Callable[[], Awaitable[T]]) -> tuple[T, datetime]:
        """An expensive whole-table figure (risk's tier counts over every account, the
        day's notifications) and when it was read: fetched once, then served from memory
        while a background refresh runs every CONSOLE_AGGREGATE_TTL seconds, so a page
        never waits on a full scan in a service after the first time."""
        now = time.monotonic()
        entry = self._cache.get(key)
        if entry is None or self.aggregate_ttl == 0:
            value = await fetch()
            at = datetime.now(UTC)
            self._cache[key] = (now, at, value)
            return value, at
        if now - entry[0] >= self.aggregate_ttl and key not in self._refreshing:

            async def refresh() -> None:
                try:
                    value = await fetch()
                    self._cache[key] = (time.monotonic(), datetime.now(UTC), value)
                finally:
                    self._refreshing.pop(key, None)

            self._refreshing[key] = asyncio.create_task(refresh())
        return entry[2], entry[1]

    async def _headers(self, service: str, base: str, key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if self._id_tokens is not None and service in SERVICES:
            token = await self._id_tokens.token(base.rstrip("/"))
            headers[idtokens.HEADER] = f"Bearer {token}"
        return headers

    async def _call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        key: str | None,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Answer:
        base = self.urls.get(service)
        if base is None:
            return Answer(service, path, None, error=f"{service} is not configured")
        clean = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        try:
            headers = await self._headers(service, base, key)
        except idtokens.Error as exc:
            return Answer(service, path, None, error=f"no ID token for {service} ({exc})")
        try:
            r = await self.http.request(
                method, base.rstrip("/") + path, params=clean, json=json, headers=headers
            )
        except httpx.HTTPError as exc:
            return Answer(
                service, path, None, error=f"{service} unreachable ({type(exc).__name__})"
            )
        if r.status_code >= 300:
            return Answer(service, path, r.status_code, error=_problem(r))
        try:
            return Answer(service, path, r.status_code, data=r.json())
        except ValueError:
            return Answer(service, path, r.status_code, error="answer is not JSON")

    async def get(self, service: str, path: str, **params: Any) -> Answer:
        """Read with the console's own key."""
        return await self._call("GET", service, path, key=self._key, params=params)

    async def post_as(self, user_key: str, service: str, path: str, json: Any = None) -> Answer:
        """An action with the signed-in user's key: the service checks that user's role."""
        return await self._call("POST", service, path, key=user_key, json=json)

    async def whoami(self, service: str, user_key: str) -> Answer:
        return await self._call("GET", service, "/auth/whoami", key=user_key)
