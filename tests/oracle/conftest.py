"""Oracle fixtures: fake price APIs (a real local server), a migrated oracle database,
an in-process app client, and helpers to run rounds and read the tables."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fusion_prime.oracle.domain import Feed, SourceRef
from fusion_prime.oracle.poller import RoundReport, poll_once
from fusion_prime.oracle.service import put_feed
from fusion_prime.oracle.sources import SourceSet, SourceUrls
from fusion_prime.oracle.spec import SPEC
from fusion_prime.platform.database import normalise_database_url
from tests.evm import anvil  # noqa: F401  (the shared session-wide EVM node fixture)
from tests.harness import asgi_client
from tests.oracle.fakes import FakeApis, fake_apis

ETH = {"coinbase": "ETH-USD", "kraken": "ETHUSD", "binance": "ETHUSDT", "coingecko": "ethereum"}
USDC = {"kraken": "USDCUSD", "coingecko": "usd-coin"}


def feed(pair: str, symbols: dict[str, str], **kw: Any) -> Feed:
    return Feed(pair, tuple(SourceRef(k, s) for k, s in symbols.items()), **kw)


def source_set(apis: FakeApis, timeout: float = 1.0, eth_rpc: str | None = None) -> SourceSet:
    urls = SourceUrls(apis.url, apis.url, apis.url, apis.url, eth_rpc)
    return SourceSet.from_urls(urls, timeout)


@pytest.fixture
def apis() -> Iterator[FakeApis]:
    with fake_apis() as a:
        yield a


@dataclass
class Oracle:
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    sources: SourceSet

    async def put(self, f: Feed) -> Feed:
        async with self.sessions() as s, s.begin():
            stored, _ = await put_feed(s, f)
        return stored

    async def round(self) -> RoundReport:
        return await poll_once(self.sessions, self.sources)

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        async with self.sessions() as s, s.begin():
            return await fn(s, *args, **kw)


@pytest.fixture
async def oracle(
    make_database: Callable[..., Awaitable[str]], apis: FakeApis
) -> AsyncIterator[Oracle]:
    url = await make_database("oracle", SPEC.migrations_dir)
    engine = create_async_engine(normalise_database_url(url, service="oracle"))
    sources = source_set(apis)
    try:
        yield Oracle(url, engine, async_sessionmaker(engine, expire_on_commit=False), sources)
    finally:
        await sources.close()
        await engine.dispose()


@pytest.fixture
async def client(oracle: Oracle, apis: FakeApis) -> AsyncIterator[httpx.AsyncClient]:
    # the app's own poller waits an hour between rounds: the tests drive rounds themselves
    async with asgi_client(SPEC, oracle.url, PRICE_UPDATE_INTERVAL="3600", **apis.env()) as c:
        yield c
