"""The relay: published only after the broker accepted; a crash re-sends the same ids."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.consumer import CONSUMED, ConsumerLoop
from fusion_prime.platform.bus.postgres import OutgoingEvent
from fusion_prime.platform.bus.relay import PostgresPublisher, Relay, RelayError
from fusion_prime.platform.database import create_engine, normalise_database_url
from tests.conftest import MakeDatabase
from tests.harness import count_rows, fetch
from tests.platform.bus.consumerapp import MIGRATIONS, SUBSCRIPTION, TOPIC, consumer
from tests.platform.bus.helpers import broker, insert_outbox, make_events


class BrokenBroker:
    async def publish(self, events: Sequence[OutgoingEvent]) -> set[uuid.UUID]:
        raise ConnectionError("bus database unreachable")


async def test_rows_stay_unpublished_when_the_broker_fails(make_database: MakeDatabase) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    await insert_outbox(db_url, make_events(5))
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    try:
        with pytest.raises(RelayError):
            await Relay("t", engine, BrokenBroker()).run_once()
    finally:
        await engine.dispose()
    rows = await fetch(db_url, "SELECT published_at, attempts, last_error FROM outbox")
    assert len(rows) == 5
    assert all(r["published_at"] is None and r["attempts"] == 1 for r in rows)
    assert all("bus database unreachable" in r["last_error"] for r in rows)


async def test_crash_after_broker_commit_resends_same_ids_and_effects_stay_single(
    make_database: MakeDatabase, bus_url: str
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    events = make_events(50, subjects=5)
    await insert_outbox(db_url, events)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with broker(bus_url) as b:
            await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
            # the broker accepted the batch, then the relay died before marking the rows
            await b.publish(
                [OutgoingEvent(e.id, TOPIC, e.subject, e.type, e.to_json()) for e in events]
            )
            loop = ConsumerLoop(consumer(), b, sessions)
            assert await loop.run_once() == 50  # consumed (and acked) before the re-send
            assert await count_rows(db_url, "outbox", "published_at IS NULL") == 50
            relay = Relay("t", engine, PostgresPublisher(b), batch_size=20)
            assert [await relay.run_once() for _ in range(4)] == [20, 20, 10, 0]
            # the broker kept one message per event id (acked ones are retained)
            assert await count_rows(bus_url, "bus_messages") == 50
            # even when retention already removed them, the inbox absorbs the re-send
            await fetch(bus_url, "DELETE FROM bus_messages")
            await b.publish(
                [OutgoingEvent(e.id, TOPIC, e.subject, e.type, e.to_json()) for e in events]
            )
            consumed = CONSUMED.labels(SUBSCRIPTION)._value.get()
            assert await loop.run_once() == 50
            assert await b.pending(SUBSCRIPTION) == 0
            # the metric counts applied effects, not the redeliveries the inbox absorbed
            assert CONSUMED.labels(SUBSCRIPTION)._value.get() == consumed
    finally:
        await engine.dispose()
    assert await count_rows(db_url, "effects") == 50
    assert await count_rows(db_url, "outbox", "published_at IS NULL") == 0
