"""The counters behind GET /stats (migration 0006) against counts over the tables."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.platform.migrations import upgrade
from fusion_prime.risk.domain import Tier
from fusion_prime.risk.spec import SPEC
from tests.harness import fetch
from tests.risk.conftest import Risk, price_event
from tests.risk.test_live import BASE, random_positions, random_tick

TIERS = [t.value for t in Tier]


async def counted(url: str) -> dict[str, int]:
    """What the counters would say, counted over the tables."""
    out = {
        f"tier:{r['status']}": int(r["n"])
        for r in await fetch(url, "SELECT status, count(*) AS n FROM account_state GROUP BY status")
    }
    row = (
        await fetch(
            url,
            "SELECT (SELECT count(*) FROM accounts) AS a, "
            "(SELECT count(DISTINCT account_id) FROM positions) AS p",
        )
    )[0]
    out["accounts"] = int(row["a"])
    out["accounts_with_positions"] = int(row["p"])
    return out


async def counters(url: str) -> dict[str, int]:
    return {
        r["counter"]: int(r["n"])
        for r in await fetch(url, "SELECT counter, sum(n) AS n FROM risk_counters GROUP BY counter")
        if r["n"] != 0 or r["counter"] in ("accounts", "accounts_with_positions")
    }


def without_zeros(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v != 0 or not k.startswith("tier:")}


async def upsert_states(conn: asyncpg.Connection, ids: list[str], statuses: list[str]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE, as a tick writes (both triggers fire)."""
    await conn.execute(
        "INSERT INTO account_state (account_id, status, evaluated_at) "
        "SELECT DISTINCT ON (i) i, s, now() FROM unnest($1::text[], $2::text[]) AS u(i, s) "
        "ON CONFLICT (account_id) DO UPDATE SET status = EXCLUDED.status",
        ids,
        statuses,
    )


class RolledBack(Exception):
    pass


async def random_sql_changes(url: str, rng: random.Random, rounds: int) -> None:
    """Inserts, updates (status and not), deletes, upserts and position changes made
    straight in SQL, several statements per transaction, each of many rows or none."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for r in range(rounds):
            async with conn.transaction():
                ids = [f"sql-{rng.randint(0, 60)}" for _ in range(rng.randint(0, 25))]
                await conn.execute(
                    "INSERT INTO accounts (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    ids,
                )
                await upsert_states(conn, ids, [rng.choice(TIERS) for _ in ids])
                await conn.execute(
                    "UPDATE account_state SET status = $1 WHERE account_id LIKE $2",
                    rng.choice(TIERS), f"sql-{rng.randint(0, 9)}%",
                )  # fmt: skip
                await conn.execute(  # an update that changes no status
                    "UPDATE account_state SET factor = 1.5 WHERE account_id LIKE 'sql-1%'"
                )
                await conn.execute(
                    "INSERT INTO positions (account_id, asset, collateral, debt, decimals) "
                    "SELECT i, a, 1, 0, 0 FROM unnest($1::text[], $2::text[]) AS u(i, a) "
                    "ON CONFLICT DO NOTHING",
                    ids, [rng.choice(["AAA", "BBB", "CCC"]) for _ in ids],
                )  # fmt: skip
                if r % 3 == 0:
                    await conn.execute(
                        "DELETE FROM positions WHERE account_id LIKE $1 AND asset = $2",
                        f"sql-{rng.randint(0, 6)}%", rng.choice(["AAA", "BBB"]),
                    )  # fmt: skip
                    moved = f"sql-{rng.randint(0, 60)}"
                    await conn.execute(
                        "INSERT INTO accounts (id) VALUES ($1 || 'x') ON CONFLICT DO NOTHING",
                        moved,
                    )
                    await conn.execute(  # a position moved to another account
                        "UPDATE positions SET account_id = account_id || 'x' WHERE account_id = $1",
                        moved,
                    )
                if r % 4 == 0:
                    await conn.execute(
                        "DELETE FROM account_state WHERE account_id LIKE $1",
                        f"sql-{rng.randint(0, 6)}%",
                    )
                    await conn.execute(
                        "DELETE FROM accounts WHERE id LIKE $1 AND id NOT IN "
                        "(SELECT account_id FROM positions)",
                        f"sql-{rng.randint(0, 6)}%",
                    )
                if r == rounds // 2:  # rolled back: leaves no trace in the counters
                    with contextlib.suppress(RolledBack):
                        async with conn.transaction():
                            await conn.execute("DELETE FROM account_state")
                            await conn.execute("DELETE FROM positions")
                            raise RolledBack
    finally:
        await conn.close()


async def test_counters_follow_the_api_ticks_and_random_sql(risk: Risk) -> None:
    rng = random.Random(16)
    t = datetime.now(UTC)
    assert await counters(risk.url) == {"accounts": 0, "accounts_with_positions": 0}
    await risk.prices(*(price_event(a, str(p), t) for a, p in BASE.items()))
    accounts = [f"acct-{i}" for i in range(30)]
    for a in accounts:
        assert (await risk.put_positions(a, *random_positions(rng))).status_code == 200
    for k in range(30):  # live ticks move accounts between tiers
        await risk.prices(random_tick(rng, t + timedelta(milliseconds=k + 1)))
        if k % 5 == 0:
            a = rng.choice(accounts)
            assert (await risk.put_positions(a, *random_positions(rng))).status_code == 200
        if k % 10 == 0:
            await random_sql_changes(risk.url, rng, 6)
    assert (await risk.put_positions("acct-0")).status_code == 200  # no positions left
    expected = await counted(risk.url)
    assert len([k for k in expected if k.startswith("tier:")]) >= 3  # several tiers seen
    assert expected["accounts_with_positions"] < expected["accounts"]
    assert without_zeros(await counters(risk.url)) == without_zeros(expected)
    stats = (await risk.client.get("/stats")).json()
    assert stats["accounts"] == expected["accounts"]
    assert stats["accounts_with_positions"] == expected["accounts_with_positions"]
    assert stats["tiers"] == {t: expected.get(f"tier:{t}", 0) for t in TIERS}
    # TRUNCATE clears the counters of its table
    conn = await asyncpg.connect(asyncpg_dsn(risk.url))
    try:
        await conn.execute("TRUNCATE account_state")
    finally:
        await conn.close()
    assert without_zeros(await counters(risk.url)) == without_zeros(await counted(risk.url))


@pytest.mark.parametrize("risk", ["sql"], indirect=True)
async def test_concurrent_writers_keep_exact_counts(risk: Risk) -> None:
    """Eight connections changing overlapping rows at once: each transaction takes a slot
    of its own (no waits on counter rows), and the sums stay exact."""
    base = [f"c-{i}" for i in range(200)]

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = await asyncpg.connect(asyncpg_dsn(risk.url))
        try:
            for _ in range(15):
                ids = sorted(set(rng.sample(base, 40)))
                async with conn.transaction():
                    await upsert_states(conn, ids, [rng.choice(TIERS) for _ in ids])
                    if rng.random() < 0.3:
                        await conn.execute(
                            "DELETE FROM account_state WHERE account_id = ANY($1::text[])",
                            ids[:5],
                        )
        finally:
            await conn.close()

    await asyncio.gather(*(writer(s) for s in range(8)))
    assert without_zeros(await counters(risk.url)) == without_zeros(await counted(risk.url))
    slots = await fetch(risk.url, "SELECT DISTINCT slot FROM risk_counters")
    assert len(slots) > 1  # the writers did not all share one slot


async def test_migration_seeds_the_counters_from_existing_rows(
    make_database: Callable[..., Awaitable[str]],
) -> None:
    url = await make_database("risk_0005", None)
    engine = create_async_engine(normalise_database_url(url, service="risk"))
    try:
        async with engine.begin() as c:
            await upgrade(c, SPEC.migrations_dir, "0005")
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute(
                "INSERT INTO accounts (id) SELECT 'm-' || i FROM generate_series(1, 500) i;"
                "INSERT INTO positions (account_id, asset, collateral, debt, decimals) "
                "SELECT 'm-' || i, a, 1, 0, 0 FROM generate_series(1, 300) i, "
                "unnest(ARRAY['AAA', 'BBB']) a;"
                "INSERT INTO account_state (account_id, status, evaluated_at) "
                "SELECT 'm-' || i, (ARRAY['healthy','warning','margin_call','liquidation',"
                "'unknown_price'])[1 + i % 5], now() FROM generate_series(1, 420) i"
            )
        finally:
            await conn.close()
        async with engine.begin() as c:
            await upgrade(c, SPEC.migrations_dir, "head")
        expected: dict[str, Any] = await counted(url)
        assert expected == {f"tier:{t}": 84 for t in TIERS} | {
            "accounts": 500,
            "accounts_with_positions": 300,
        }
        assert await counters(url) == expected
    finally:
        await engine.dispose()
