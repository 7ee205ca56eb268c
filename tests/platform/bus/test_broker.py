"""The postgres broker and the in-process relay/consumer against real databases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from typer.testing import CliRunner

from fusion_prime.platform.bus.cli import app as events_cli
from fusion_prime.platform.bus.consumer import ConsumerLoop, ConsumerOptions
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.bus.outbox import publish_envelope
from fusion_prime.platform.bus.postgres import DEAD_LETTERS
from fusion_prime.platform.database import create_engine, normalise_database_url
from tests.conftest import MakeDatabase
from tests.harness import count_rows, fetch, fetchval
from tests.platform.bus.consumerapp import MIGRATIONS, SUBSCRIPTION, TOPIC, apply_effects, consumer
from tests.platform.bus.helpers import (
    broker,
    bus_workers,
    insert_outbox,
    make_events,
    new_token,
    outgoing,
    wait_until,
)


@pytest.fixture
async def db_url(make_database: MakeDatabase) -> str:
    return await make_database("busconsumer", MIGRATIONS)


async def test_end_to_end_outbox_to_effect(db_url: str, bus_url: str) -> None:
    events = make_events(300, subjects=7)
    async with bus_workers(db_url, bus_url, consumers=[consumer()]) as w:
        await w._broker()  # subscription declared before the first publish
        await wait_until(lambda: _has_subscription(bus_url))
        await insert_outbox(db_url, events)
        await wait_until(lambda: _count(db_url, "effects", 300))
    assert await count_rows(db_url, "outbox", "published_at IS NULL") == 0
    assert await fetchval(db_url, "SELECT count(DISTINCT event_id) FROM effects") == 300
    assert await count_rows(db_url, "inbox") == 300
    # per-subject order: each subject's effects were applied in publish order
    rows = await fetch(db_url, "SELECT subject, n FROM effects ORDER BY id")
    seen: dict[str, int] = {}
    for r in rows:
        assert r["n"] == seen.get(r["subject"], 0) + 1
        seen[r["subject"]] = r["n"]


async def test_publish_in_rolled_back_transaction_delivers_nothing(
    db_url: str, bus_url: str
) -> None:
    lost, kept = make_events(2, subjects=2)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=1)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with bus_workers(db_url, bus_url, consumers=[consumer()]) as w:
        await w._broker()
        await wait_until(lambda: _has_subscription(bus_url))
        async with sessions() as s:
            await s.begin()
            await publish_envelope(s, TOPIC, lost)
            await s.rollback()
        async with sessions() as s, s.begin():
            await publish_envelope(s, TOPIC, kept)
        await wait_until(lambda: _count(db_url, "effects", 1))
        await asyncio.sleep(0.3)
    await engine.dispose()
    assert await count_rows(db_url, "effects") == 1
    assert await count_rows(db_url, "effects", "event_id = $1", kept.id) == 1
    assert await count_rows(db_url, "outbox", "id = $1", lost.id) == 0
    assert await count_rows(bus_url, "bus_messages", "event_id = $1", lost.id) == 0


async def test_visibility_timeout_redelivers_a_lease_nobody_acked(bus_url: str) -> None:
    (event,) = make_events(1)
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
        await b.publish(outgoing([event]))
        first = await b.lease(SUBSCRIPTION, 10, 0.5, new_token())  # then "the process dies"
        assert [m.event_id for m in first] == [event.id]
        assert await b.lease(SUBSCRIPTION, 10, 0.5, new_token()) == []
        await asyncio.sleep(0.7)
        token = new_token()
        again = await b.lease(SUBSCRIPTION, 10, 30, token)
        assert [(m.event_id, m.attempts) for m in again] == [(event.id, 2)]
        # the dead lease can no longer ack
        assert await b.ack(SUBSCRIPTION, [first[0].id], new_token(), retention=60) == 0
        assert await b.ack(SUBSCRIPTION, [again[0].id], token, retention=60) == 1
        assert await b.pending(SUBSCRIPTION) == 0


async def test_per_subject_order_holds_while_earlier_message_is_leased_or_retrying(
    bus_url: str,
) -> None:
    a1, b1, a2 = make_events(3, subjects=1)
    b1 = b1.model_copy(update={"subject": "other"})
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
        await b.publish(outgoing([a1, b1, a2]))
        t1 = new_token()
        (m1,) = await b.lease(SUBSCRIPTION, 1, 30, t1)
        assert m1.event_id == a1.id
        # a2 must wait for a1; b1 (another subject) flows
        t2 = new_token()
        got = await b.lease(SUBSCRIPTION, 10, 30, t2)
        assert [m.event_id for m in got] == [b1.id]
        await b.ack(SUBSCRIPTION, [got[0].id], t2, retention=60)
        # a failed a1 backing off still holds a2 back
        await b.nack(SUBSCRIPTION, m1.id, t1, "boom", delay=0.4)
        assert await b.lease(SUBSCRIPTION, 10, 30, new_token()) == []
        await asyncio.sleep(0.5)
        t3 = new_token()
        got = await b.lease(SUBSCRIPTION, 10, 30, t3)
        assert [m.event_id for m in got] == [a1.id, a2.id]  # one batch, in order


async def test_same_event_delivered_twice_has_one_effect(db_url: str, bus_url: str) -> None:
    (event,) = make_events(1)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    # directly: the inbox turns a second delivery into a no-op
    for expected_new in (1, 0):
        async with sessions() as s, s.begin():
            assert await consume_batch(s, SUBSCRIPTION, [event], apply_effects) == expected_new
    # through the broker: the acked message is gone (retention 0) and the relay re-sends it
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
        await b.publish(outgoing([event]))
        loop = ConsumerLoop(consumer(), b, sessions, ConsumerOptions(retention=0))
        assert await loop.run_once() == 1
        assert await b.pending(SUBSCRIPTION) == 0
        await b.publish(outgoing([event]))
        await b.publish(outgoing([event]))  # ignored while the broker still holds it
        assert await b.pending(SUBSCRIPTION) == 1
        assert await loop.run_once() == 1
        assert await b.pending(SUBSCRIPTION) == 0
    await engine.dispose()
    assert await count_rows(db_url, "effects", "event_id = $1", event.id) == 1
    assert await count_rows(db_url, "inbox", "event_id = $1", event.id) == 1


async def test_poison_message_is_dead_lettered_others_flow_and_replay_applies_once(
    db_url: str, bus_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = make_events(40, subjects=5, poison=[12])
    poison = events[12]
    before = DEAD_LETTERS.labels(SUBSCRIPTION)._value.get()
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    opts = ConsumerOptions(batch_size=10, retry_base=0.02, retry_max=0.1, poll_interval=0.05)
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 3)
        await b.publish(outgoing(events))
        loop = ConsumerLoop(consumer(max_attempts=3), b, sessions, opts)
        task = asyncio.create_task(loop.run())
        try:
            await wait_until(lambda: _count(db_url, "effects", 39), timeout=30)
            await wait_until(lambda: _count(bus_url, "bus_dead_letters", 1), timeout=30)
            dead = await fetch(bus_url, "SELECT * FROM bus_dead_letters")
            assert dead[0]["event_id"] == poison.id
            assert dead[0]["attempts"] == 3
            assert "PoisonError" in dead[0]["error"]
            assert DEAD_LETTERS.labels(SUBSCRIPTION)._value.get() == before + 1
            # the poisoned subject's later events were not blocked for ever
            assert await count_rows(db_url, "effects", "subject = $1", poison.subject) == 7
            assert await count_rows(db_url, "effects", "event_id = $1", poison.id) == 0
            # ...but none of them overtook it: they were applied after it was dead-lettered
            later = await fetchval(
                db_url,
                "SELECT min(applied_at) FROM effects WHERE subject = $1 AND n > $2",
                poison.subject,
                poison.data["n"],
            )
            assert later >= dead[0]["dead_at"]

            # fix the cause, then replay through the CLI
            await fetchval(db_url, "INSERT INTO cures VALUES ($1) RETURNING 1", poison.subject)
            monkeypatch.setenv("FP_BUS_URL", bus_url)
            runner = CliRunner()
            listed = await asyncio.to_thread(runner.invoke, events_cli, ["dead-letters"])
            assert listed.exit_code == 0, listed.output
            assert str(dead[0]["id"]) in listed.output
            res = await asyncio.to_thread(runner.invoke, events_cli, ["replay", str(dead[0]["id"])])
            assert res.exit_code == 0, res.output
            await wait_until(lambda: _count(db_url, "effects", 40), timeout=30)
            again = await asyncio.to_thread(
                runner.invoke, events_cli, ["replay", str(dead[0]["id"])]
            )
            assert again.exit_code == 1
            assert "already replayed" in again.output
            by = await fetchval(
                bus_url, "SELECT replayed_by FROM bus_dead_letters WHERE id = $1", dead[0]["id"]
            )
            assert by.startswith("cli:")  # the command line records the OS user
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await engine.dispose()
    assert await count_rows(db_url, "effects", "event_id = $1", poison.id) == 1
    assert await count_rows(db_url, "effects") == 40


async def test_cleanup_deletes_acked_messages_past_retention(bus_url: str) -> None:
    events = make_events(3)
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
        await b.publish(outgoing(events))
        token = new_token()
        leased = await b.lease(SUBSCRIPTION, 2, 30, token)
        await b.ack(SUBSCRIPTION, [m.id for m in leased], token, retention=3600)
        assert await b.cleanup(3600) == 0
        await asyncio.sleep(0.2)
        assert await b.cleanup(0.1) == 2
        assert await count_rows(bus_url, "bus_messages") == 1


async def _count(url: str, table: str, n: int) -> bool:
    return await count_rows(url, table) >= n


async def _has_subscription(bus_url: str) -> bool:
    return await count_rows(bus_url, "bus_subscriptions", "name = $1", SUBSCRIPTION) == 1


async def test_message_whose_leases_keep_expiring_is_dead_lettered(
    db_url: str, bus_url: str
) -> None:
    (event,) = make_events(1)
    engine = create_engine(normalise_database_url(db_url, service="t"), pool_size=1)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 2)
        await b.publish(outgoing([event]))
        for _ in range(2):  # two consumers that die holding the lease
            assert len(await b.lease(SUBSCRIPTION, 10, 0.05, new_token())) == 1
            await asyncio.sleep(0.1)
        loop = ConsumerLoop(consumer(max_attempts=2), b, sessions)
        assert await loop.run_once() == 1
    await engine.dispose()
    dead = await fetch(bus_url, "SELECT attempts, error FROM bus_dead_letters")
    assert len(dead) == 1
    assert "lease expired 2 times" in dead[0]["error"]
    assert await count_rows(db_url, "effects") == 0
