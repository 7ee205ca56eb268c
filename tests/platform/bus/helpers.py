"""Helpers to run the bus in-process against real databases (relay, consumers, feeding)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.consumer import Consumer
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.outbox import OutboxRow, publish_rows
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from fusion_prime.platform.bus.wiring import BusWorkers, running
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.settings import BaseServiceSettings
from tests.platform.bus.consumerapp import TOPIC

FAST = {
    "FP_BUS_POLL_INTERVAL": "0.1",
    "FP_BUS_RETRY_BASE": "0.05",
    "FP_BUS_RETRY_MAX": "0.2",
    "FP_BUS_VISIBILITY_TIMEOUT": "5",
}


def make_events(
    n: int, subjects: int = 10, *, poison: Sequence[int] = (), event_type: str = "thing.happened"
) -> list[Envelope]:
    """`n` envelopes spread round-robin over `subjects`; data.n counts per subject."""
    counters: dict[str, int] = {}
    out = []
    for i in range(n):
        subject = f"s{i % subjects}"
        counters[subject] = counters.get(subject, 0) + 1
        data: dict[str, Any] = {"n": counters[subject], "i": i}
        if i in poison:
            data["poison"] = True
        out.append(Envelope(type=event_type, source="tests", subject=subject, data=data))
    return out


def outgoing(envelopes: Sequence[Envelope], topic: str = TOPIC) -> list[OutgoingEvent]:
    return [OutgoingEvent(e.id, topic, e.subject, e.type, e.to_json()) for e in envelopes]


async def insert_outbox(db_url: str, envelopes: Sequence[Envelope], topic: str = TOPIC) -> None:
    """Commit events into a service outbox in one transaction, through `publish_rows`."""
    engine = create_engine(normalise_database_url(db_url, service="tests"), pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            await publish_rows(
                session, [OutboxRow(e.id, topic, e.subject, e.type, e.to_json()) for e in envelopes]
            )
    finally:
        await engine.dispose()


def settings_for(db_url: str, bus_url: str, **env: str) -> BaseServiceSettings:
    merged = {**FAST, **env}
    return BaseServiceSettings(DATABASE_URL=db_url, FP_BUS_URL=bus_url, FP_ENV="test", **merged)


@asynccontextmanager
async def bus_workers(
    db_url: str,
    bus_url: str,
    *,
    consumers: Sequence[Consumer] = (),
    publishes: bool = True,
    service: str = "busconsumer",
    **env: str,
) -> AsyncIterator[BusWorkers]:
    """Relay and/or consumer loops for one service database, in this event loop."""
    settings = settings_for(db_url, bus_url, **env)
    engine = create_engine(normalise_database_url(db_url, service=service), pool_size=4)
    try:
        workers = BusWorkers(
            service,
            settings,
            engine,
            async_sessionmaker(engine, expire_on_commit=False),
            publishes=publishes,
            consumers=consumers,
        )
        async with running(workers):
            yield workers
    finally:
        await engine.dispose()


@asynccontextmanager
async def broker(bus_url: str) -> AsyncIterator[PostgresBroker]:
    async with PostgresBroker(bus_url, pool_size=2) as b:
        yield b


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def new_token() -> uuid.UUID:
    return uuid.uuid4()
