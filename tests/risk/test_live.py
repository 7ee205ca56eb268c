"""The book in memory (RISK_BOOK=memory) against the tables it follows."""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from fusion_prime.risk import repository as repo
from fusion_prime.risk import service
from fusion_prime.risk.domain import (
    Position,
    Price,
    RiskParams,
    State,
    Tier,
    TierConfig,
    classify,
    evaluate,
)
from fusion_prime.risk.repository import PriceUpdate
from fusion_prime.risk.spec import SPEC
from tests.e2e.conftest import BUS_ENV, drained, prepare_bus
from tests.harness import ServiceProcess, count_rows, fetch, fetchval
from tests.risk.conftest import PARAMS, Risk, price_event
from tests.settlement.factory import wait_for

DECIMALS = {a: int(str(p["decimals"])) for a, p in PARAMS.items()}
PRICES_TOPIC = "market.prices.v1"
PRICES_SUB = "risk-engine-prices-consumer"


async def exact_view(url: str, now: datetime) -> dict[str, dict[str, Any]]:
    """Every account recomputed from scratch from the tables with the Decimal rules."""
    params = {
        r["asset"]: RiskParams(
            r["asset"],
            r["ltv"],
            r["liquidation_threshold"],
            r["liquidation_bonus"],
            timedelta(seconds=r["max_price_age_seconds"]),
            decimals=r["decimals"],
        )
        for r in await fetch(
            url, "SELECT DISTINCT ON (asset) * FROM risk_parameters ORDER BY asset, version DESC"
        )
    }
    cfg_row = (await fetch(url, "SELECT * FROM risk_config ORDER BY version DESC LIMIT 1"))[0]
    cfg = TierConfig(
        healthy=cfg_row["healthy"],
        warning=cfg_row["warning"],
        margin_call=cfg_row["margin_call"],
        hysteresis=cfg_row["hysteresis"],
    )
    prices = {
        r["asset"]: Price(r["asset"], r["price"], r["source_time"])
        for r in await fetch(url, "SELECT * FROM prices")
    }
    positions: dict[str, list[Position]] = {}
    for r in await fetch(url, "SELECT * FROM positions ORDER BY account_id, asset"):
        positions.setdefault(r["account_id"], []).append(
            Position(r["asset"], int(r["collateral"]), int(r["debt"]), r["decimals"])
        )
    states = {r["account_id"]: r for r in await fetch(url, "SELECT * FROM account_state")}
    out = {}
    for account, ps in positions.items():
        h = evaluate(ps, params, prices, cfg, now)
        raw = (
            h.status
            if h.status is Tier.UNKNOWN_PRICE
            else classify(h.weighted_collateral, h.debt_value, cfg)
        )
        st = states.get(account)
        out[account] = {
            "raw_tier": raw.value,
            "factor": h.factor,
            "weighted": h.weighted_collateral,
            "debt": h.debt_value,
            "status": st["status"] if st else None,
            "known_tier": st["known_tier"] if st else None,
        }
    return out


def assert_book_matches(book: dict[str, dict[str, Any]], exact: dict[str, dict[str, Any]]) -> None:
    assert set(book) == set(exact)
    for account, e in exact.items():
        b = book[account]
        where = f"{account}: book {b} vs tables {e}"
        assert b["raw_tier"] == e["raw_tier"], where
        assert b["status"] == e["status"], where
        assert b["known_tier"] == e["known_tier"], where
        for ours, theirs in (("weighted_collateral", "weighted"), ("debt_value", "debt")):
            assert float(b[ours]) == pytest.approx(float(e[theirs]), rel=1e-9, abs=1e-9), where
        if e["factor"] is not None and e["raw_tier"] != "unknown_price":
            assert b["factor"] == pytest.approx(float(e["factor"]), rel=1e-9), where


async def book_views(client: httpx.AsyncClient, accounts: list[str]) -> dict[str, Any]:
    out = {}
    for a in accounts:
        r = await client.get(f"/book/accounts/{a}")
        assert r.status_code == 200, r.text
        out[a] = r.json()
    return out


def random_positions(rng: random.Random) -> list[dict[str, Any]]:
    assets = rng.sample(sorted(PARAMS), rng.randint(1, 3))
    out = []
    for i, asset in enumerate(assets):
        scale = 10 ** DECIMALS[asset]
        if i == 0:
            out.append({"asset": asset, "collateral": str(rng.randint(1, 50) * scale // 10),
                        "decimals": DECIMALS[asset]})  # fmt: skip
        else:
            out.append({"asset": asset, "debt": str(rng.randint(0, 40) * scale // 100),
                        "decimals": DECIMALS[asset]})  # fmt: skip
    return out


BASE = {"ETH": Decimal(3000), "WBTC": Decimal(60000), "USDC": Decimal(1)}


def random_tick(rng: random.Random, at: datetime) -> Any:
    asset = rng.choice(sorted(BASE))
    move = Decimal(str(round(rng.uniform(0.5, 1.6), 4)))
    return price_event(asset, str((BASE[asset] * move).quantize(Decimal("0.0001"))), at)


@pytest.mark.parametrize("risk", ["memory"], indirect=True)
async def test_book_follows_positions_prices_and_parameters(risk: Risk) -> None:
    rng = random.Random(14)
    t = datetime.now(UTC)
    await risk.prices(*(price_event(a, str(p), t) for a, p in BASE.items()))
    accounts = [f"acct-{i}" for i in range(25)]
    for a in accounts:
        assert (await risk.put_positions(a, *random_positions(rng))).status_code == 200
    for k in range(40):
        await risk.prices(random_tick(rng, t + timedelta(milliseconds=k + 1)))
        if k % 7 == 0:
            a = rng.choice(accounts)
            assert (await risk.put_positions(a, *random_positions(rng))).status_code == 200
        if k == 20:  # a new threshold moves the sums of every ETH holder
            r = await risk.client.put(
                "/risk-parameters/ETH",
                json={**PARAMS["ETH"], "liquidation_threshold": "0.77", "ltv": "0.7",
                      "max_price_age_seconds": 3600},
            )  # fmt: skip
            assert r.status_code == 201, r.text
    stats = (await risk.client.get("/stats")).json()
    assert stats["book"]["mode"] == "memory"
    assert stats["book"]["accounts"] == 25
    assert stats["book"]["last_tick"]["candidates"] > 0
    assert stats["book"]["rebuilds"] == 1  # loaded once, never rebuilt
    now = datetime.now(UTC)
    assert_book_matches(await book_views(risk.client, accounts), await exact_view(risk.url, now))
    # and every tier the tables hold is the exact domain's (hysteresis aside: none here)
    assert {r["status"] for r in await fetch(risk.url, "SELECT status FROM account_state")} <= {
        t.value for t in Tier
    }
    # the exact positions the book keeps (the passes evaluate with them instead of reading
    # them again) are those of the tables, after every position change of the sequence
    book = risk.client.app.state.runtime.state["book"]  # type: ignore[attr-defined]
    await assert_kept_positions_are_the_tables(risk, book, accounts)
    kept = [book.ids[i] for i in book._exact]
    assert len(kept) == len(accounts)  # every account was evaluated once at least
    for a in kept[:3]:  # changed again after being kept: replaced before the next pass
        assert (await risk.put_positions(a, *random_positions(rng))).status_code == 200
    await risk.prices(random_tick(rng, t + timedelta(seconds=1)))
    await assert_kept_positions_are_the_tables(risk, book, accounts)


async def assert_kept_positions_are_the_tables(risk: Risk, book: Any, accounts: list[str]) -> None:
    sessions = async_sessionmaker(risk.engine, expire_on_commit=False)
    async with sessions() as s, s.begin():
        stored = await repo.positions_of(s, accounts)
        assert await book.positions_for(s, accounts) == stored
        states = await repo.states_of(s, accounts)
        held = await book.states_for(s, accounts)
    assert {a: held[a] for a in accounts} == {a: states.get(a, State()) for a in accounts}
    assert book._exact
    for i, ps in book._exact.items():
        assert ps == stored[book.ids[i]], book.ids[i]


async def _warning_account(risk: Risk, account: str) -> tuple[datetime, PriceUpdate]:
    """Base prices, one account in warning (3000 x 0.8 / 2000 = 1.2), and a price that
    would move it to liquidation (ETH at 1000, one second newer)."""
    t = datetime.now(UTC)
    await risk.prices(*(price_event(a, str(p), t) for a, p in BASE.items()))
    await risk.put_positions(
        account,
        {"asset": "ETH", "collateral": str(10**18), "decimals": 18},
        {"asset": "USDC", "debt": str(2000 * 10**6), "decimals": 6},
    )
    assert await fetch(risk.url, "SELECT status FROM account_state") == [("warning",)]
    return t, PriceUpdate("ETH", Decimal(1000), "t", t + timedelta(seconds=1), uuid.uuid4())


@pytest.mark.parametrize("risk", ["memory"], indirect=True)
async def test_a_rolled_back_pass_rebuilds_the_book(risk: Risk) -> None:
    t, crash = await _warning_account(risk, "acct-r")
    sessions = async_sessionmaker(risk.engine, expire_on_commit=False)
    decided: list[str] = []

    async def crash_then_fail() -> None:
        async with sessions() as s, s.begin():
            out = await service.apply_prices(s, [crash])
            decided.extend(e.data["to_tier"] for e in out.events)
            raise RuntimeError("abandoned")

    with pytest.raises(RuntimeError, match="abandoned"):
        await crash_then_fail()
    assert decided == ["liquidation"]  # the book had applied it
    book = risk.client.app.state.runtime.state["book"]  # type: ignore[attr-defined]
    assert book.stale  # its change is not trusted any more
    assert await count_rows(risk.url, "margin_events") == 1  # the first tier change only
    # the next pass rebuilds from the tables, where the crash price never arrived
    await risk.prices(price_event("USDC", "1", t + timedelta(seconds=2)))
    assert not book.stale
    assert book.rebuilds == 2
    view = (await risk.client.get("/book/accounts/acct-r")).json()
    assert view["status"] == "warning"
    assert view["factor"] == pytest.approx(1.2)
    assert_book_matches({"acct-r": view}, await exact_view(risk.url, datetime.now(UTC)))
    assert await count_rows(risk.url, "margin_events") == 1


@pytest.mark.parametrize("risk", ["memory"], indirect=True)
async def test_a_pass_whose_rollback_fails_frees_the_book(risk: Risk) -> None:
    """The server drops the pass's connection and the pass then fails: the rollback itself
    raises, and SQLAlchemy sends no after_rollback. The book must still be let go and
    rebuilt: before, it stayed held and every later pass waited on it for good."""
    t, crash = await _warning_account(risk, "acct-f")
    events = await count_rows(risk.url, "margin_events")
    sessions = async_sessionmaker(risk.engine, expire_on_commit=False)
    book = risk.client.app.state.runtime.state["book"]  # type: ignore[attr-defined]
    rebuilds = book.rebuilds

    async def pass_on_a_dropped_connection() -> None:
        async with sessions() as s, s.begin():
            await service.apply_prices(s, [crash])
            pid = (await s.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            # with a timeout (ms) it returns once the backend is gone
            assert await fetchval(risk.url, "SELECT pg_terminate_backend($1, 10000)", pid)
            raise RuntimeError("abandoned")

    # what surfaces is the rollback's own error, not the pass's
    with pytest.raises(DBAPIError, match="connection is closed"):
        await pass_on_a_dropped_connection()
    assert book.stale
    # the next pass gets the book (it waited without end before) and rebuilds it
    await asyncio.wait_for(risk.prices(price_event("USDC", "1", t + timedelta(seconds=2))), 60)
    assert not book.stale
    assert book.rebuilds == rebuilds + 1
    view = (await risk.client.get("/book/accounts/acct-f")).json()
    assert view["status"] == "warning"
    assert await fetch(risk.url, "SELECT status FROM account_state") == [("warning",)]
    assert await count_rows(risk.url, "margin_events") == events  # the crash's is not


async def test_sql_mode_keeps_no_book(risk: Risk) -> None:
    stats = (await risk.client.get("/stats")).json()
    mode = stats["book"]["mode"]
    assert mode in ("memory", "sql")
    r = await risk.client.get("/book/accounts/nobody")
    assert r.status_code == 404
    assert ("in the book" in r.text) == (mode == "memory")


async def _publish(bus: str, *envelopes: Envelope) -> None:
    async with PostgresBroker(bus, pool_size=1) as broker:
        await broker.publish(
            [OutgoingEvent(e.id, PRICES_TOPIC, e.subject, e.type, e.to_json()) for e in envelopes]
        )


async def test_book_matches_the_tables_after_random_work_and_kill9_restarts(
    make_database: Callable[..., Awaitable[str]], bus_url: str, log_dir: Path
) -> None:
    """A long random sequence of position changes (HTTP) and price ticks (the real bus),
    with kill -9 of the real process in the middle of it; after each phase the book in
    memory equals a from-scratch recomputation from the tables."""
    url = await make_database("risk", SPEC.migrations_dir)
    await prepare_bus(bus_url)
    env = {"FP_BUS_URL": bus_url, **BUS_ENV, "RISK_SWEEP_INTERVAL": "3600", "RISK_BOOK": "memory",
           "RISK_LEASE_SECONDS": "2"}  # fmt: skip
    proc = ServiceProcess.for_service("risk", url, log_dir, extra_env=env)
    rng = random.Random(2014)
    t0 = datetime.now(UTC)
    clock = [0]

    def tick() -> Envelope:
        clock[0] += 1
        return random_tick(rng, t0 + timedelta(milliseconds=clock[0]))

    accounts = [f"acct-{i:03d}" for i in range(40)]

    async def settle(c: httpx.AsyncClient) -> None:
        async def loaded() -> bool:
            return bool((await c.get("/stats")).json()["book"]["loaded"])

        await wait_for(loaded, timeout=60)
        await wait_for(lambda: drained(bus_url, PRICES_SUB), timeout=60)

    async def check(c: httpx.AsyncClient) -> None:
        await settle(c)
        rows = await fetch(url, "SELECT DISTINCT account_id FROM positions")
        held = [r["account_id"] for r in rows]
        assert_book_matches(await book_views(c, held), await exact_view(url, datetime.now(UTC)))

    try:
        proc.start()
        proc.wait_ready(60)
        async with proc.async_client(timeout=30) as c:
            for asset, p in PARAMS.items():
                body = {**p, "max_price_age_seconds": 3600}
                r = await c.put(f"/risk-parameters/{asset}", json=body)
                assert r.status_code == 201, r.text
            await _publish(bus_url, *(price_event(a, str(p), t0) for a, p in BASE.items()))
            for a in accounts:
                body = {"positions": random_positions(rng)}
                r = await c.put(f"/accounts/{a}/positions", json=body)
                assert r.status_code == 200, r.text
        for _ in range(2):
            async with proc.async_client(timeout=30) as c:
                for _step in range(30):
                    if rng.random() < 0.3:
                        a = rng.choice(accounts)
                        r = await c.put(f"/accounts/{a}/positions",
                                        json={"positions": random_positions(rng)})  # fmt: skip
                        assert r.status_code == 200, r.text
                    else:
                        await _publish(bus_url, *(tick() for _ in range(rng.randint(1, 3))))
                await check(c)
                # ticks in flight, then kill -9
                await _publish(bus_url, *(tick() for _ in range(5)))
            proc.kill9()
            proc.start()
            proc.wait_ready(60)
            async with proc.async_client(timeout=30) as c:
                await check(c)
                stats = (await c.get("/stats")).json()["book"]
                assert stats["accounts"] == len(accounts)
                assert stats["load_seconds"] is not None
        assert "book loaded" in proc.log_text()
        # no tier change was emitted twice across the kills: one event per (account, time)
        dup = await fetch(
            url,
            "SELECT account_id, created_at FROM margin_events GROUP BY 1, 2 HAVING count(*) > 1",
        )
        assert dup == []
        assert await count_rows(url, "outbox", "topic = 'alerts.margin.v1'") == await count_rows(
            url, "margin_events"
        )
    finally:
        proc.terminate()


async def _stats(clients: list[httpx.AsyncClient]) -> list[dict[str, Any]]:
    return [(await c.get("/stats")).json()["book"] for c in clients]


async def _split(clients: list[httpx.AsyncClient], partitions: int = 16) -> dict[int, str]:
    """Wait until the instances hold disjoint leases covering every partition, each at
    least one and none above its fair share (the split the instances rebalance to; before
    that, one may still hold partitions it is about to give back); returns partition ->
    instance."""
    share = -(-partitions // len(clients))

    async def settled() -> dict[int, str] | None:
        owner: dict[int, str] = {}
        stats = await _stats(clients)
        for st in stats:
            if not st["loaded"] or not 0 < len(st["partitions_owned"]) <= share:
                return None
            for p in st["partitions_owned"]:
                if p in owner:
                    return None
                owner[p] = st["instance"]
        return owner if len(owner) == partitions else None

    split: dict[int, str] = await wait_for(settled, timeout=60, interval=0.2)
    return split


async def _books_match(url: str, clients: list[httpx.AsyncClient]) -> bool:
    exact = await exact_view(url, datetime.now(UTC))
    try:
        for c in clients:
            assert_book_matches(await book_views(c, sorted(exact)), exact)
    except AssertionError:
        return False
    return True


async def _assert_one_evaluator(url: str, split: dict[int, str], since: datetime) -> int:
    """Every state written since `since` was written by the owner of its partition."""
    rows = await fetch(
        url, "SELECT account_id, evaluated_by FROM account_state WHERE evaluated_at >= $1", since
    )
    for r in rows:
        p = zlib.crc32(r["account_id"].encode()) % 16
        assert r["evaluated_by"] == split[p], (r, p, split)
    return len(rows)


@pytest.mark.parametrize("instances", [2, 3])
async def test_partitions_split_between_instances_and_are_taken_over_after_kill9(
    make_database: Callable[..., Awaitable[str]], bus_url: str, log_dir: Path, instances: int
) -> None:
    """Real processes on one database and one bus (sharing the price subscription):
    leases split the 16 partitions; every account is evaluated by its partition's owner
    only; position writes through any instance and ticks consumed by any reach every
    book; after kill -9 of one instance the others take its partitions over within the
    lease time and evaluate its accounts; no tier change is emitted twice."""
    url = await make_database("risk", SPEC.migrations_dir)
    await prepare_bus(bus_url)
    env = {"FP_BUS_URL": bus_url, **BUS_ENV, "RISK_SWEEP_INTERVAL": "3600", "RISK_BOOK": "memory",
           "RISK_LEASE_SECONDS": "5"}  # fmt: skip
    procs = [
        ServiceProcess.for_service("risk", url, log_dir, extra_env=env) for _ in range(instances)
    ]
    rng = random.Random(7 + instances)
    t0 = datetime.now(UTC)
    clock = [0]
    accounts = [f"acct-{i:03d}" for i in range(30)]

    def next_tick() -> Envelope:
        clock[0] += 1
        return random_tick(rng, t0 + timedelta(milliseconds=clock[0]))

    async def work(clients: list[httpx.AsyncClient], steps: int) -> None:
        for _ in range(steps):
            if rng.random() < 0.4:
                body = {"positions": random_positions(rng)}
                r = await rng.choice(clients).put(
                    f"/accounts/{rng.choice(accounts)}/positions", json=body
                )
                assert r.status_code == 200, r.text
            else:
                await _publish(bus_url, next_tick())
        await wait_for(lambda: drained(bus_url, PRICES_SUB), timeout=60)
        await wait_for(lambda: _books_match(url, clients), timeout=30, interval=0.3)

    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(60)
        clients = [p.async_client(timeout=30) for p in procs]
        try:
            split = await _split(clients)
            since = datetime.now(UTC)
            for asset, prm in PARAMS.items():
                body = {**prm, "max_price_age_seconds": 3600}
                assert (await clients[0].put(f"/risk-parameters/{asset}", json=body)).is_success
            await _publish(bus_url, *(price_event(a, str(v), t0) for a, v in BASE.items()))
            for i, a in enumerate(accounts):
                body = {"positions": random_positions(rng)}
                r = await clients[i % instances].put(f"/accounts/{a}/positions", json=body)
                assert r.status_code == 200, r.text
            await work(clients, 25)
            assert await _assert_one_evaluator(url, split, since) == len(accounts)
            # kill -9 the last instance: its leases expire, the others take them over
            dead = (await _stats(clients[-1:]))[0]["instance"]
            orphans = [a for a in accounts if split[zlib.crc32(a.encode()) % 16] == dead]
            assert orphans
            procs[-1].kill9()
            await clients[-1].aclose()
            clients = clients[:-1]
            split = await _split(clients)
            assert dead not in split.values()
            since = datetime.now(UTC)
            await work(clients, 15)
            # the dead instance's accounts change tier twice (whatever they were before):
            # their new owners evaluate and write them
            sinking = [{"asset": "ETH", "collateral": str(10**15), "decimals": 18},
                       {"asset": "USDC", "debt": str(10**12), "decimals": 6}]  # fmt: skip
            floating = [{"asset": "ETH", "collateral": str(10**18), "decimals": 18}]
            for body in (sinking, floating):
                for a in orphans:
                    r = await rng.choice(clients).put(
                        f"/accounts/{a}/positions", json={"positions": body}
                    )
                    assert r.status_code == 200, r.text
                await wait_for(lambda: _books_match(url, clients), timeout=30, interval=0.3)
            assert await _assert_one_evaluator(url, split, since) >= len(orphans)
            rows = await fetch(
                url,
                "SELECT account_id FROM account_state WHERE evaluated_at >= $1 "
                "AND account_id = ANY($2::text[])",
                since,
                orphans,
            )
            assert sorted(r["account_id"] for r in rows) == sorted(orphans)
        finally:
            for c in clients:
                await c.aclose()
        events = await fetch(
            url,
            "SELECT account_id, from_tier, to_tier FROM margin_events "
            "WHERE event_type = 'margin.tier_changed' ORDER BY account_id, created_at, id",
        )
        last: dict[str, str] = {}
        for e in events:
            if e["account_id"] in last:
                assert e["from_tier"] == last[e["account_id"]], events
            assert e["from_tier"] != e["to_tier"]
            last[e["account_id"]] = e["to_tier"]
    finally:
        for p in procs:
            p.terminate()
