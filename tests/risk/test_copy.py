"""The COPY helpers of the in-memory book against a real PostgreSQL server.

A start-up load once never finished in CI (the book waited on its COPY of positions for
the whole 300 s test limit, and every request waited for the book): `_copy_out` now takes
its data in a coroutine sink and gives up on a COPY that sends nothing for `idle` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.risk import repository as repo
from fusion_prime.risk.live import _binary_copy, _copy_out
from fusion_prime.risk.spec import SPEC
from tests.conftest import MakeDatabase
from tests.harness import fetch

SLEEPER = "SELECT 1 FROM pg_sleep(60)"  # its first row comes after 60 s


@dataclass
class Db:
    url: str
    conn: asyncpg.Connection

    async def running(self, query: str) -> list[asyncpg.Record]:
        """Statements still active on the server that start with COPY (`query`)."""
        return await fetch(
            self.url,
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
            f"COPY ({query[:30]}%",
        )


@pytest.fixture
async def db(make_database: MakeDatabase) -> AsyncIterator[Db]:
    """A migrated risk database and one connection to it (closed afterwards)."""
    url = await make_database("risk", SPEC.migrations_dir)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield Db(url, conn)
    finally:
        await conn.close()


async def test_copy_out_returns_every_row_in_both_formats(db: Db) -> None:
    # ~2.7 MB of text: many CopyData messages, so many calls of the sink
    text = await _copy_out(
        db.conn,
        "SELECT g, repeat('x', 20) FROM generate_series(1, $1::int) g",
        100_000,
        fmt="text",
    )
    lines = text.decode().split("\n")[:-1]
    assert len(lines) == 100_000
    assert lines[0] == "1\t" + "x" * 20
    assert lines[-1] == "100000\t" + "x" * 20
    raw = await _copy_out(db.conn, "SELECT g::int4, (g * 2)::int8 FROM generate_series(1, 5000) g")
    rows = _binary_copy(raw, [("a", ">i4"), ("b", ">i8")])
    assert rows["a"].tolist() == list(range(1, 5001))
    assert rows["b"].tolist() == [2 * i for i in range(1, 5001)]
    empty = await _copy_out(db.conn, "SELECT g::int4 FROM generate_series(1, 0) g")
    assert len(_binary_copy(empty, [("a", ">i4")])) == 0


async def test_a_copy_out_that_sends_nothing_is_given_up_and_the_connection_still_works(
    db: Db,
) -> None:
    # the watchdog allows 1 s of silence
    with pytest.raises(TimeoutError, match="gave no data for 1 s"):
        await _copy_out(db.conn, SLEEPER, fmt="text", idle=1.0)
    # the server-side statement was cancelled, not left running on the connection
    assert await db.conn.fetchval("SELECT 41 + 1") == 42
    assert await db.running(SLEEPER) == []


async def test_a_caller_cancelled_mid_copy_leaves_no_copy_running(db: Db) -> None:
    task = asyncio.ensure_future(_copy_out(db.conn, SLEEPER, fmt="text"))
    await asyncio.sleep(0.5)
    assert len(await db.running(SLEEPER)) == 1  # it was running on the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.conn.fetchval("SELECT 7") == 7
    assert await db.running(SLEEPER) == []


async def test_send_copy_writes_the_payload(db: Db) -> None:
    payload = "".join(f"acc-{i}\n" for i in range(20_000)).encode()
    await repo.send_copy(db.conn, "accounts", ["id"], payload)
    await repo.send_copy(db.conn, "accounts", ["id"], b"")  # nothing to send: no statement
    rows = await fetch(db.url, "SELECT count(*) AS n, min(id) AS lo FROM accounts")
    assert (rows[0]["n"], rows[0]["lo"]) == (20_000, "acc-0")
