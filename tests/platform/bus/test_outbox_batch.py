"""The set-based outbox publisher writes every row and wakes the relay only on commit."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.outbox import OUTBOX_CHANNEL, OutboxRow, publish_rows
from fusion_prime.platform.database import create_engine, normalise_database_url
from tests.conftest import MakeDatabase
from tests.harness import fetch
from tests.platform.bus.consumerapp import MIGRATIONS, TOPIC
from tests.platform.bus.helpers import make_events


async def test_publish_rows_notifies_on_commit_only(make_database: MakeDatabase) -> None:
    url = await make_database("busconsumer", MIGRATIONS)
    listener = await asyncpg.connect(asyncpg_dsn(url))
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(OUTBOX_CHANNEL, lambda *args: woken.put_nowait(args[1]))
    engine = create_engine(normalise_database_url(url, service="tests"))
    events = make_events(5)
    rows = [OutboxRow(e.id, TOPIC, e.subject, e.type, e.to_json()) for e in events]
    try:
        sessions = async_sessionmaker(engine)
        async with sessions() as session:
            await session.begin()
            await publish_rows(session, rows[:2])
            await session.rollback()
        await asyncio.sleep(0.3)
        assert woken.empty()
        assert await fetch(url, "SELECT id FROM outbox") == []

        async with sessions() as session, session.begin():
            await publish_rows(session, rows)
        await asyncio.wait_for(woken.get(), 5)
        stored = await fetch(url, "SELECT id, subject, event_type FROM outbox ORDER BY seq")
        assert [r["id"] for r in stored] == [e.id for e in events]
    finally:
        await listener.close()
        await engine.dispose()
