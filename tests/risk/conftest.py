"""Risk fixtures: a migrated risk database, an app client, and consumers driven directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume, consume_batch
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.risk.handlers import handle_escrow_events, handle_prices
from fusion_prime.risk.spec import SPEC
from tests.harness import asgi_client

PARAMS = {
    "USDC": {
        "ltv": "0.80",
        "liquidation_threshold": "0.85",
        "liquidation_bonus": "0.04",
        "decimals": 6,
    },
    "WBTC": {
        "ltv": "0.70",
        "liquidation_threshold": "0.75",
        "liquidation_bonus": "0.10",
        "decimals": 8,
    },
    "ETH": {
        "ltv": "0.75",
        "liquidation_threshold": "0.80",
        "liquidation_bonus": "0.05",
        "decimals": 18,
    },
}


def price_event(
    asset: str, price: str, at: datetime | None = None, source: str = "test"
) -> Envelope:
    return Envelope(
        type="price.updated",
        source="oracle",
        subject=asset,
        data={
            "asset": asset,
            "price": price,
            "source": source,
            "source_time": (at or datetime.now(UTC)).isoformat(),
        },
    )


@dataclass
class Risk:
    url: str
    engine: AsyncEngine
    client: httpx.AsyncClient

    async def prices(self, *envelopes: Envelope) -> int:
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        async with sessions() as s, s.begin():
            return await consume_batch(s, "risk-engine-prices-consumer", envelopes, handle_prices)

    async def escrow(self, envelope: Envelope) -> bool:
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        async with sessions() as s, s.begin():
            return await consume(s, "risk-events-consumer", envelope, handle_escrow_events)

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """Run a service function in its own committed transaction."""
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        async with sessions() as s, s.begin():
            return await fn(s, *args, **kw)

    async def put_positions(self, account: str, *positions: dict[str, Any]) -> httpx.Response:
        return await self.client.put(
            f"/accounts/{account}/positions", json={"positions": positions}
        )


@pytest.fixture(params=["memory", "sql"])
async def risk(
    request: pytest.FixtureRequest, make_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Risk]:
    """Both live paths answer every test the same: the book in memory and the SQL filter."""
    url = await make_database("risk", SPEC.migrations_dir)
    engine = create_async_engine(normalise_database_url(url, service="risk"))
    try:
        async with asgi_client(SPEC, url, RISK_BOOK=request.param) as client:
            for asset, p in PARAMS.items():
                r = await client.put(
                    f"/risk-parameters/{asset}", json={**p, "max_price_age_seconds": 3600}
                )
                assert r.status_code == 201, r.text
            yield Risk(url, engine, client)
    finally:
        await engine.dispose()
