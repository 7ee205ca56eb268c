"""Risk engine benchmark on one generated book (1,000,000 accounts x 4 positions, 20 assets).

Run: .venv/bin/python -m bench.risk [--accounts N] [--live-accounts N] [--no-db]

(a) full re-evaluation (numpy), (b) one price tick re-evaluating only holders,
(c) the old-style per-account Decimal + dicts baseline, timed on a sample and
extrapolated, (d) peak RSS, (e) persisting tier changes, snapshots and events for 1% of
the accounts with COPY, (f) the live service's set-based SQL path for one tick.
Data is generated at run time from a fixed seed and never written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.database import driver_connection
from fusion_prime.risk.domain import (
    LADDER,
    Position,
    Price,
    RiskParams,
    State,
    Tier,
    TierConfig,
    decide,
    evaluate,
)
from fusion_prime.risk.engine import UNKNOWN, Book, synthetic_book

SEED = 7
N_ASSETS = 20
DECIMALS = [(6, 8, 18)[a % 3] for a in range(N_ASSETS)]
ASSETS = [f"A{a:02d}" for a in range(N_ASSETS)]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = TierConfig()
# the engine reports raw tier changes; without hysteresis each of them is a persisted change
NO_HYSTERESIS = TierConfig(hysteresis=Decimal(0))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


# -- (c) the baseline: how the old service computed health, account by account ----------


def old_style_inputs(book: Book, accounts: range) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Accounts as dicts of base-unit positions, prices and parameters as dicts."""
    out = []
    for a in accounts:
        positions = []
        for p in range(int(book.acct_ptr[a]), int(book.acct_ptr[a + 1])):
            asset = int(book.pos_asset[p])
            scale = 10 ** (DECIMALS[asset] - 6)
            positions.append(
                {
                    "asset": ASSETS[asset],
                    "collateral": int(book.coll[p]) * scale,
                    "debt": int(book.debt[p]) * scale,
                    "decimals": DECIMALS[asset],
                }
            )
        out.append({"account_id": f"acct-{a}", "positions": positions})
    market = {
        "prices": {ASSETS[i]: str(book.price_exact[i]) for i in range(N_ASSETS)},
        "params": {
            ASSETS[i]: {"liquidation_threshold": str(book.lt_exact[i])} for i in range(N_ASSETS)
        },
    }
    return out, market


def old_style_health(account: dict[str, Any], market: dict[str, Any]) -> dict[str, Any]:
    weighted = Decimal(0)
    debt = Decimal(0)
    collateral = Decimal(0)
    for pos in account["positions"]:
        price = Decimal(market["prices"][pos["asset"]])
        lt = Decimal(market["params"][pos["asset"]]["liquidation_threshold"])
        scale = Decimal(10) ** pos["decimals"]
        value = Decimal(pos["collateral"]) / scale * price
        collateral += value
        weighted += value * lt
        debt += Decimal(pos["debt"]) / scale * price
    factor = weighted / debt if debt > 0 else None
    if factor is None or factor >= Decimal("1.25"):
        tier = "healthy"
    elif factor >= Decimal("1.10"):
        tier = "warning"
    elif factor >= Decimal("1.00"):
        tier = "margin_call"
    else:
        tier = "liquidation"
    return {"account_id": account["account_id"], "factor": factor, "tier": tier}


# -- exact inputs for the persisted outcomes -----------------------------------------


def domain_inputs(book: Book) -> tuple[dict[str, RiskParams], dict[str, Price]]:
    params = {
        ASSETS[i]: RiskParams(
            ASSETS[i],
            book.lt_exact[i] - Decimal("0.05"),
            book.lt_exact[i],
            Decimal("0.05"),
            timedelta(hours=1),
            decimals=DECIMALS[i],
        )
        for i in range(N_ASSETS)
    }
    prices = {ASSETS[i]: Price(ASSETS[i], book.price_exact[i], NOW) for i in range(N_ASSETS)}
    return params, prices


def domain_positions(book: Book, a: int) -> list[Position]:
    return [
        Position(
            ASSETS[int(book.pos_asset[p])],
            int(book.coll[p]) * 10 ** (DECIMALS[int(book.pos_asset[p])] - 6),
            int(book.debt[p]) * 10 ** (DECIMALS[int(book.pos_asset[p])] - 6),
            DECIMALS[int(book.pos_asset[p])],
        )
        for p in range(int(book.acct_ptr[a]), int(book.acct_ptr[a + 1]))
    ]


def tier_of(code: int) -> Tier:
    return Tier.UNKNOWN_PRICE if code == UNKNOWN else LADDER[code]


@dataclass
class Persisted:
    build_s: float
    write_s: float
    steps: dict[str, float]
    states: int
    snapshots: int
    events: int


async def persist_outcomes(
    url: str, book: Book, accounts: list[int], old: dict[int, int]
) -> Persisted:
    """(e): exact Decimal health + decisions for the changed accounts, then COPY them."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from fusion_prime.platform.database import normalise_database_url
    from fusion_prime.risk import repository as repo
    from fusion_prime.risk.service import build_event, snapshot_record

    engine = create_async_engine(normalise_database_url(url, service="bench"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    ids = [f"acct-{a}" for a in accounts]
    async with sessions() as s, s.begin():  # setup, untimed: the accounts exist already
        apg = await driver_connection(s)
        await apg.copy_records_to_table("accounts", records=[(i,) for i in ids], columns=["id"])
    params, prices = domain_inputs(book)
    t0 = time.perf_counter()
    states, snaps, events = [], [], []
    for a, account_id in zip(accounts, ids, strict=True):
        h = evaluate(domain_positions(book, a), params, prices, CONFIG, NOW)
        prev = tier_of(old[a])
        d = decide(
            State(prev, prev, NOW - timedelta(minutes=10), NOW - timedelta(minutes=10)),
            h,
            NO_HYSTERESIS,
            NOW,
        )
        states.append(repo.StateRow(account_id, d.state, h.factor, NOW))
        events += [build_event(account_id, et, d, h, NOW) for et in d.events]
        if d.snapshot:
            snaps.append(snapshot_record(account_id, d.snapshot, h, NOW))
    build = time.perf_counter() - t0
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    async with sessions() as s, s.begin():
        t = time.perf_counter()
        await repo.upsert_states(s, states)
        steps["states"] = time.perf_counter() - t
        apg = await driver_connection(s)
        t = time.perf_counter()
        await repo.copy_snapshots(apg, snaps)
        steps["snapshots"] = time.perf_counter() - t
        t = time.perf_counter()
        await repo.copy_events(apg, events)
        steps["events+outbox"] = time.perf_counter() - t
        t = time.perf_counter()
    steps["commit"] = time.perf_counter() - t
    write = time.perf_counter() - t0
    await engine.dispose()
    return Persisted(build, write, steps, len(states), len(snaps), len(events))


async def live_sql_tick(url: str, book: Book, n: int) -> dict[str, Any]:
    """(f): the service's own path (SQL filter + Decimal rules + COPY) for one tick."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from fusion_prime.platform.database import normalise_database_url
    from fusion_prime.risk import repository as repo
    from fusion_prime.risk.service import apply_prices

    engine = create_async_engine(normalise_database_url(url, service="bench"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    params, prices = domain_inputs(book)
    t_load = time.perf_counter()
    async with sessions() as s, s.begin():
        for rp in params.values():
            await repo.insert_params(s, rp)
        await repo.upsert_prices(
            s,
            [
                repo.PriceUpdate(p.asset, p.price, "bench", NOW, uuid.uuid4())
                for p in prices.values()
            ],
        )
        apg = await driver_connection(s)
        await apg.execute("DELETE FROM account_state; DELETE FROM accounts")
        await apg.copy_records_to_table(
            "accounts", records=[(f"acct-{a}",) for a in range(n)], columns=["id"]
        )
        rows = []
        for a in range(n):
            for p in domain_positions(book, a):
                if p.collateral or p.debt:
                    rows.append((f"acct-{a}", p.asset, p.collateral, p.debt, p.decimals))
        await apg.copy_records_to_table(
            "positions",
            records=rows,
            columns=["account_id", "asset", "collateral", "debt", "decimals"],
        )
        # state as the engine classified it (exact at the bounds), snapshots not yet due
        sub = Book(
            n,
            book.pos_account[: int(book.acct_ptr[n])],
            book.pos_asset[: int(book.acct_ptr[n])],
            book.coll[: int(book.acct_ptr[n])],
            book.debt[: int(book.acct_ptr[n])],
            book.unit_exp,
            list(book.price_exact),
            list(book.lt_exact),
        )
        tiers = sub.full()
        await repo.upsert_states(
            s,
            [
                repo.StateRow(
                    f"acct-{a}", State(tier_of(int(t)), tier_of(int(t)), NOW, NOW), None, NOW
                )
                for a, t in enumerate(tiers.tolist())
            ],
        )
    async with sessions() as s, s.begin():
        await (await driver_connection(s)).execute("ANALYZE")
    load = time.perf_counter() - t_load
    asset = 3
    new_price = (book.price_exact[asset] * Decimal("0.97")).quantize(Decimal("1e-4"))
    holders = len(np.unique(sub.a_account[sub.asset_ptr[asset] : sub.asset_ptr[asset + 1]]))
    now = NOW + timedelta(seconds=1)
    t0 = time.perf_counter()
    async with sessions() as s, s.begin():
        out = await apply_prices(
            s, [repo.PriceUpdate(ASSETS[asset], new_price, "bench", now, uuid.uuid4())], now
        )
    took = time.perf_counter() - t0
    t_eng, res = timed(sub.tick, asset, new_price)
    # an oracle round: every asset moves in one consumer batch (the whole book is filtered)
    later = now + timedelta(seconds=1)
    rng = np.random.default_rng(SEED + 1)
    round_updates = [
        repo.PriceUpdate(
            ASSETS[a],
            (sub.price_exact[a] * Decimal(str(round(float(rng.uniform(0.99, 1.01)), 4)))).quantize(
                Decimal("1e-4")
            ),
            "bench",
            later,
            uuid.uuid4(),
        )
        for a in range(N_ASSETS)
    ]
    t0 = time.perf_counter()
    async with sessions() as s, s.begin():
        round_out = await apply_prices(s, round_updates, later)
    took_round = time.perf_counter() - t0
    await engine.dispose()
    return {
        "accounts": n,
        "holders": holders,
        "attention": out.evaluated,
        "events": len(out.events),
        "seconds": took,
        "engine_seconds": t_eng,
        "engine_changed": len(res.accounts),
        "load_seconds": load,
        "round_seconds": took_round,
        "round_attention": round_out.evaluated,
        "round_events": len(round_out.events),
    }


async def with_database(fn: Any, *args: Any) -> Any:
    from fusion_prime.risk.spec import SPEC
    from tests.harness import DatabaseFactory, admin_url_from_env

    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    url = await factory.create("risk", SPEC.migrations_dir)
    try:
        return await fn(url, *args)
    finally:
        await factory.drop(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=20_000, help="baseline sample size")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--live-accounts", type=int, default=100_000)
    ap.add_argument("--no-db", action="store_true", help="skip (e) and (f)")
    args = ap.parse_args()
    console = Console(width=170)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss / 2**20

    t_gen, book = timed(synthetic_book, args.accounts, N_ASSETS, 4, SEED, CONFIG)
    full_times = []
    for _ in range(5):
        t, tiers = timed(book.full)
        full_times.append(t)
    counts = np.bincount(tiers, minlength=5)

    rng = np.random.default_rng(SEED)
    tick_times, evaluated, changed_total = [], [], 0
    old_tiers: dict[int, int] = {}
    changed_order: list[int] = []
    for _ in range(args.ticks):
        asset = int(rng.integers(0, N_ASSETS))
        move = Decimal(str(round(float(rng.uniform(0.96, 1.04)), 4)))
        price = (book.price_exact[asset] * move).quantize(Decimal("1e-4"))
        t, res = timed(book.tick, asset, price)
        tick_times.append(t)
        evaluated.append(res.evaluated)
        changed_total += len(res.accounts)
        for acc, old in zip(res.accounts.tolist(), res.old.tolist(), strict=True):
            if acc not in old_tiers:
                old_tiers[acc] = old
                changed_order.append(acc)
    peak_engine = peak_rss_mb()
    engine_rss = proc.memory_info().rss / 2**20

    sample, market = old_style_inputs(book, range(min(args.sample, book.n)))
    t_base, base_out = timed(lambda: [old_style_health(a, market) for a in sample])
    per_account = t_base / len(sample)
    params, prices = domain_inputs(book)
    exact_sample = range(min(5000, book.n))
    t_exact, _ = timed(
        lambda: [
            evaluate(domain_positions(book, a), params, prices, CONFIG, NOW) for a in exact_sample
        ]
    )
    # the baseline agrees with the engine on the sample (same tiers)
    base_tiers = np.array([LADDER.index(Tier(r["tier"])) for r in base_out], dtype=np.int8)
    # full recomputation from positions and the final prices vs the incremental state
    inc_factor, inc_tier = book.factor.copy(), book.tier.copy()
    book.full()
    agree = float((base_tiers == book.tier[: len(sample)]).mean())
    finite = np.isfinite(book.factor)
    max_rel = float((np.abs(inc_factor[finite] - book.factor[finite]) / book.factor[finite]).max())
    tiers_equal = bool((inc_tier == book.tier).all())
    del inc_factor, inc_tier

    full_med = statistics.median(full_times)
    tick_med = statistics.median(tick_times)
    holders = int(statistics.median(evaluated))
    base_full = per_account * book.n
    base_tick = per_account * holders

    persisted: Persisted | None = None
    live: dict[str, Any] | None = None
    if not args.no_db:
        target = max(1, book.n // 100)
        # accounts whose tier differs after the ticks from before them (net changes)
        chosen = [a for a in changed_order if int(book.tier[a]) != old_tiers[a]][:target]
        if len(chosen) < target:  # pad with unchanged accounts (state rows only)
            extra = [a for a in range(book.n) if a not in old_tiers][: target - len(chosen)]
            for a in extra:
                old_tiers[a] = int(book.tier[a])
            chosen += extra
        persisted = asyncio.run(with_database(persist_outcomes, book, chosen, old_tiers))
        live = asyncio.run(with_database(live_sql_tick, book, min(args.live_accounts, book.n)))

    table = Table(title=f"risk engine: {book.n:,} accounts x 4 positions, {N_ASSETS} assets")
    for col in ("measure", "result", "target", "baseline (Decimal+dicts)", "speed-up"):
        table.add_column(col)
    table.add_row("generate book (not timed against target)", f"{t_gen:.2f} s", "", "", "")
    table.add_row(
        "(a) full re-evaluation, median of 5",
        f"{full_med * 1e3:.0f} ms (min {min(full_times) * 1e3:.0f})",
        "<= 300 ms",
        f"{base_full:.1f} s (extrapolated)",
        f"{base_full / full_med:,.0f}x",
    )
    table.add_row(
        f"(b) one tick, median of {len(tick_times)} (~{holders:,} holders)",
        f"{tick_med * 1e3:.1f} ms (max {max(tick_times) * 1e3:.1f})",
        "<= 50 ms",
        f"{base_tick:.2f} s (extrapolated)",
        f"{base_tick / tick_med:,.0f}x",
    )
    table.add_row(
        f"(c) baseline, measured on {len(sample):,} accounts",
        f"{per_account * 1e6:.1f} us/account",
        "",
        "",
        "",
    )
    table.add_row(
        "    exact domain.evaluate (live path), 5,000 accounts",
        f"{t_exact / len(exact_sample) * 1e6:.1f} us/account",
        "",
        "",
        "",
    )
    table.add_row(
        "(d) peak RSS after (a)+(b) / whole run",
        f"{peak_engine:.0f} MB / {peak_rss_mb():.0f} MB",
        "<= 1024 MB",
        f"arrays {book.nbytes() / 2**20:.0f} MB, start {rss0:.0f} MB, now {engine_rss:.0f} MB",
        "",
    )
    if persisted is not None:
        table.add_row(
            f"(e) persist {persisted.states:,} accounts: COPY + commit",
            f"{persisted.write_s * 1e3:.0f} ms",
            "<= 1000 ms",
            f"{persisted.snapshots:,} snapshots, {persisted.events:,} events (+outbox); "
            + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in persisted.steps.items())
            + " ms",
            "",
        )
        table.add_row(
            "    exact Decimal health + decisions for them",
            f"{persisted.build_s * 1e3:.0f} ms",
            "",
            "",
            "",
        )
    if live is not None:
        table.add_row(
            f"(f) live service tick, SQL path, {live['accounts']:,} accounts in PostgreSQL",
            f"{live['seconds'] * 1e3:.0f} ms",
            "",
            f"{live['holders']:,} holders -> {live['attention']:,} attention, "
            f"{live['events']:,} events; engine {live['engine_seconds'] * 1e3:.1f} ms",
            "",
        )
        table.add_row(
            f"    all {N_ASSETS} assets in one batch (oracle round), same book",
            f"{live['round_seconds'] * 1e3:.0f} ms",
            "",
            f"{live['accounts']:,} filtered -> {live['round_attention']:,} attention, "
            f"{live['round_events']:,} events",
            "",
        )
    console.print(table)
    console.print(
        f"tiers {dict(zip([t.value for t in Tier], counts.tolist(), strict=False))}; "
        f"incremental vs fresh full after {len(tick_times)} ticks: max rel diff {max_rel:.2e}, "
        f"tiers identical: {tiers_equal}; baseline tiers agree on sample: {agree:.4%}; "
        f"tier changes over the ticks: {changed_total:,}; refined exactly: {book.refined}"
    )
    console.print(
        f"load average {psutil.getloadavg()[0]:.2f} on {psutil.cpu_count()} cores "
        "(the machine is shared: timings move with it)"
    )
    console.print(json.dumps({"full_ms": full_med * 1e3, "tick_ms": tick_med * 1e3}), style="dim")


if __name__ == "__main__":
    main()
