"""Alerts fixtures: a migrated alerts database, the app in-process (its delivery worker
running for real), local provider servers, and margin events fed through the inbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from fusion_prime.alerts.handlers import handle_margin_events
from fusion_prime.alerts.spec import SPEC
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.database import normalise_database_url
from tests.alerts.fakes import HttpFake, SmtpSink, http_server, smtp_server
from tests.harness import asgi_client, fetch

SUBSCRIPTION = "alert-notification-service"
SECRET_KEY = "alerts-test-secret-key-0123456789abcdef"
SMS_SID = "ACtest0001"
# fast retries so tests see back-off and exhaustion in a second or two
FAST = {
    "ALERTS_SECRET_KEY": SECRET_KEY,
    "ALERTS_POLL_INTERVAL": "0.05",
    "ALERTS_RETRY_BASE": "0.1",
    "ALERTS_RETRY_MAX_DELAY": "0.4",
    "ALERTS_RETRY_FOR": "30",
    "ALERTS_HTTP_TIMEOUT": "1",
    "ALERTS_SMTP_TIMEOUT": "5",
    "ALERTS_LEASE_SECONDS": "15",
    "ALERTS_SMS_ACCOUNT_SID": SMS_SID,
    "ALERTS_SMS_AUTH_TOKEN": "sms-token-not-a-real-one",
    "ALERTS_SMS_FROM": "+15005550006",
}


def margin_event(
    account: str,
    event_type: str = "margin.tier_changed",
    *,
    from_tier: str | None = "healthy",
    to_tier: str = "warning",
    factor: str | None = "1.2",
    prices: dict[str, str] | None = None,
    evaluated_at: str = "2026-01-01T12:00:00+00:00",
) -> Envelope:
    """An `alerts.margin.v1` envelope shaped exactly like the risk engine's (build_event)."""
    return Envelope(
        type=event_type,
        source="risk",
        subject=account,
        data={
            "account_id": account,
            "from_tier": from_tier,
            "to_tier": to_tier,
            "status": to_tier,
            "factor": factor,
            "collateral_value": "3000",
            "weighted_collateral": "2400",
            "debt_value": "2000",
            "borrow_capacity": "250",
            "price_drop_to_liquidation": "0.1666",
            "max_repay_value": "0",
            "seizures": [],
            "prices": prices if prices is not None else {"ETH": "3000", "USDC": "1"},
            "missing_prices": [],
            "stale_prices": [],
            "evaluated_at": evaluated_at,
        },
    )


@dataclass
class Alerts:
    url: str
    engine: AsyncEngine
    client: httpx.AsyncClient
    smtp: SmtpSink
    http: HttpFake

    async def consume(self, *envelopes: Envelope) -> int:
        """What the platform consumer does: inbox claim + handler in one transaction."""
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        async with sessions() as s, s.begin():
            return await consume_batch(s, SUBSCRIPTION, envelopes, handle_margin_events)

    async def contact(
        self, account: str, *channels: tuple[str, str], **extra: Any
    ) -> dict[str, Any]:
        r = await self.client.post(
            "/contacts",
            json={
                "account_id": account,
                "name": extra.pop("name", "Treasury desk"),
                "channels": [{"channel": c, "address": a} for c, a in channels],
                **extra,
            },
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def prefs(self, account: str, **body: Any) -> dict[str, Any]:
        body.setdefault(
            "kinds", ["warning", "margin_call", "liquidation", "reminder", "price_unavailable"]
        )
        body.setdefault("channels", ["email"])
        r = await self.client.put(f"/accounts/{account}/preferences", json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        return await fetch(self.url, sql, *args)

    async def wait(self, sql: str, *args: Any, timeout: float = 15.0) -> Any:
        """Poll until the query returns a truthy first value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            rows = await fetch(self.url, sql, *args)
            last = rows[0][0] if rows else None
            if last:
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {sql!r} (last: {last!r})")

    async def notification(self, nid: uuid.UUID | str) -> dict[str, Any]:
        r = await self.client.get(f"/notifications/{nid}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpSink]:
    with smtp_server(tmp_path) as sink:
        yield sink


@pytest.fixture
def http() -> Iterator[HttpFake]:
    with http_server() as fake:
        yield fake


@pytest.fixture
async def alerts(
    make_database: Callable[..., Awaitable[str]], smtp: SmtpSink, http: HttpFake
) -> AsyncIterator[Alerts]:
    url = await make_database("alerts", SPEC.migrations_dir)
    engine = create_async_engine(normalise_database_url(url, service="alerts"))
    env = {**FAST, **smtp.env(), "ALERTS_SMS_API_URL": http.url}
    try:
        async with asgi_client(SPEC, url, **env) as client:
            yield Alerts(url, engine, client, smtp, http)
    finally:
        await engine.dispose()
