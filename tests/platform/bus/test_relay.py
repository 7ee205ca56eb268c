"""The relay: published only after the broker accepted; a crash re-sends the same ids."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.consumer import CONSUMED, ConsumerLoop
from fusion_prime.platform.bus.postgres import OutgoingEvent
from fusion_prime.platform.bus.relay import PostgresPublisher, PublishResult, Relay, RelayError
from fusion_prime.platform.database import create_engine, normalise_database_url
from tests.conftest import MakeDatabase
from tests.harness import count_rows, fetch, fetchval
from tests.platform.bus.consumerapp import MIGRATIONS, SUBSCRIPTION, TOPIC, consumer
from tests.platform.bus.helpers import broker, insert_outbox, make_events


class BrokenBroker:
    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
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
    # an outage is not a refusal: it costs no attempt, so it can never dead-letter a row
    assert all(r["published_at"] is None and r["attempts"] == 0 for r in rows)
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


async def test_a_row_the_broker_permanently_rejects_is_dead_lettered_and_the_stream_flows(
    make_database: MakeDatabase, bus_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row whose subject is too large for the broker's index is refused by PostgreSQL
    every time (program_limit_exceeded): it is dead-lettered in the outbox after the
    relay's max attempts, and every other row, before and after it, is published."""
    import secrets

    db_url = await make_database("busconsumer", MIGRATIONS)
    before, after = make_events(3, subjects=3), make_events(4, subjects=2)
    (huge,) = make_events(1)
    await insert_outbox(db_url, before)
    await fetch(  # written by hand: an envelope's own subject is bounded, the column is not
        db_url,
        "INSERT INTO outbox (id, topic, subject, event_type, envelope) "
        "VALUES ($1, $2, $3, $4, CAST($5 AS jsonb))",
        huge.id,
        TOPIC,
        secrets.token_hex(6000),
        huge.type,
        huge.to_json(),
    )
    await insert_outbox(db_url, after)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    try:
        async with broker(bus_url) as b:
            await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
            relay = Relay("t", engine, PostgresPublisher(b), batch_size=100)
            for _ in range(8):  # bounded: the default max attempts is 5
                with contextlib.suppress(RelayError):
                    await relay.run_once()
    finally:
        await engine.dispose()
    published = {
        r["id"] for r in await fetch(db_url, "SELECT id FROM outbox WHERE published_at IS NOT NULL")
    }
    assert published == {e.id for e in [*before, *after]}
    assert await count_rows(bus_url, "bus_messages") == 7
    dead = await fetch(
        db_url, "SELECT id, attempts, last_error FROM outbox WHERE published_at IS NULL"
    )
    assert [(r["id"], r["attempts"]) for r in dead] == [(huge.id, 5)]
    assert "index row" in dead[0]["last_error"]

    # the operator sees it and can re-queue it (here it is refused again, once)
    from typer.testing import CliRunner

    from fusion_prime.platform.bus.cli import app as events_cli

    monkeypatch.setenv("DATABASE_URL", db_url)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(
            CliRunner().invoke, events_cli, ["outbox", *args], env={"COLUMNS": "300"}
        )

    listed = await cli()
    assert listed.exit_code == 0, listed.output
    assert str(huge.id) in listed.output
    seq = await fetchval(db_url, "SELECT seq FROM outbox WHERE id = $1", huge.id)
    replayed = await cli("--replay", str(seq))
    assert replayed.exit_code == 0, replayed.output
    assert await fetchval(db_url, "SELECT attempts FROM outbox WHERE id = $1", huge.id) == 0
    again = await cli("--replay", str(seq))
    assert again.exit_code == 1  # not dead-lettered (any more)


async def test_a_backlog_is_relayed_in_growing_batches_in_order_and_a_short_one_resets(
    make_database: MakeDatabase, bus_url: str
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    events = make_events(250, subjects=7)
    await insert_outbox(db_url, events)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    sizes: list[tuple[int | None, int]] = []
    try:
        async with broker(bus_url) as b:
            await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
            relay = Relay("t", engine, PostgresPublisher(b), batch_size=10, max_batch_size=80)
            once = relay.run_once

            async def recorded(limit: int | None = None) -> int:
                n = await once(limit)
                sizes.append((limit, n))
                return n

            relay.run_once = recorded  # type: ignore[method-assign]
            task = asyncio.create_task(relay.run())
            try:
                for _ in range(400):
                    if len(sizes) >= 8:
                        break
                    await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await engine.dispose()
    # 10, 20, 40, 80, 80 = 230 full batches, then 20 rows (short), then back to 10
    assert sizes[:7] == [(10, 10), (20, 20), (40, 40), (80, 80), (80, 80), (80, 20), (10, 0)]
    rows = await fetch(bus_url, "SELECT event_id FROM bus_messages ORDER BY id")
    assert [r["event_id"] for r in rows] == [e.id for e in events]
