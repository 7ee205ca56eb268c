"""The COPY helpers of the in-memory book against a real PostgreSQL server.

A start-up load once never finished in CI (the book waited on its COPY of positions for
the whole 300 s test limit, and every request waited for the book): `_copy_out` now takes
its data in a coroutine sink and gives up on a COPY that sends nothing for `idle` seconds.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.risk import repository as repo
from fusion_prime.risk.live import _binary_copy, _copy_out
from fusion_prime.risk.spec import SPEC
from tests.conftest import MakeDatabase
from tests.harness import fetch


async def test_copy_out_returns_every_row_in_both_formats(make_database: MakeDatabase) -> None:
    url = await make_database("risk", SPEC.migrations_dir)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # ~2.7 MB of text: many CopyData messages, so many calls of the sink
        text = await _copy_out(
            conn,
            "SELECT g, repeat('x', 20) FROM generate_series(1, $1::int) g",
            100_000,
            fmt="text",
        )
        lines = text.decode().split("\n")[:-1]
        assert len(lines) == 100_000
        assert lines[0] == "1\t" + "x" * 20
        assert lines[-1] == "100000\t" + "x" * 20
        raw = await _copy_out(conn, "SELECT g::int4, (g * 2)::int8 FROM generate_series(1, 5000) g")
        rows = _binary_copy(raw, [("a", ">i4"), ("b", ">i8")])
        assert rows["a"].tolist() == list(range(1, 5001))
        assert rows["b"].tolist() == [2 * i for i in range(1, 5001)]
        empty = await _copy_out(conn, "SELECT g::int4 FROM generate_series(1, 0) g")
        assert len(_binary_copy(empty, [("a", ">i4")])) == 0
    finally:
        await conn.close()


async def test_a_copy_out_that_sends_nothing_is_given_up_and_the_connection_still_works(
    make_database: MakeDatabase,
) -> None:
    url = await make_database("risk", SPEC.migrations_dir)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # the server sends its first row after 60 s; the watchdog allows 1 s of silence
        with pytest.raises(TimeoutError, match="gave no data for 1 s"):
            await _copy_out(conn, "SELECT 1 FROM pg_sleep(60)", fmt="text", idle=1.0)
        # the server-side statement was cancelled, not left running on the connection
        assert await conn.fetchval("SELECT 41 + 1") == 42
        running = await fetch(
            url,
            "SELECT pid FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE 'COPY (SELECT 1 FROM pg_sleep%'",
        )
        assert running == []
    finally:
        await conn.close()


async def test_a_caller_cancelled_mid_copy_leaves_no_copy_running(
    make_database: MakeDatabase,
) -> None:
    url = await make_database("risk", SPEC.migrations_dir)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        task = asyncio.ensure_future(_copy_out(conn, "SELECT 1 FROM pg_sleep(60)", fmt="text"))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await conn.fetchval("SELECT 7") == 7
    finally:
        await conn.close()


async def test_send_copy_writes_the_payload(make_database: MakeDatabase) -> None:
    url = await make_database("risk", SPEC.migrations_dir)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        payload = "".join(f"acc-{i}\n" for i in range(20_000)).encode()
        await repo.send_copy(conn, "accounts", ["id"], payload)
        await repo.send_copy(conn, "accounts", ["id"], b"")  # nothing to send: no statement
    finally:
        await conn.close()
    rows = await fetch(url, "SELECT count(*) AS n, min(id) AS lo FROM accounts")
    assert (rows[0]["n"], rows[0]["lo"]) == (20_000, "acc-0")
