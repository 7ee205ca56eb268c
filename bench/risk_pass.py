"""One live pass in process, step by step: where a tick's time goes per changed account.

Run: .venv/bin/python -m bench.risk_pass [--accounts N] [--ticks N] [--move X]

The bench's generated book (bench.risk_live.populate) in a fresh risk database, a
`live.LiveBook` owning every partition, and `service.apply_prices` per tick in its own
committed transaction (no process, no bus, no relay): the price of the ticked asset
alternates between x`move` and x1. Timers wrap the steps of the pass (module functions,
so the code measured is the service's own); the first tick is left out of the medians
(it is the one that warms what a pass keeps). Then the persistence floor of
bench.risk_live on the same book.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.risk import ASSETS, N_ASSETS, SEED
from bench.risk_live import TICK_ASSET, persistence_floor, populate
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.risk import live, service
from fusion_prime.risk import repository as repo
from fusion_prime.risk.domain import Evaluator
from fusion_prime.risk.engine import synthetic_book
from fusion_prime.risk.spec import SPEC
from tests.harness import DatabaseFactory, admin_url_from_env

TIMES: dict[str, float] = {}


def timed(owner: Any, name: str, key: str | None = None) -> None:
    """Wrap owner.name (a module function or a class's method) with a timer."""
    fn = getattr(owner, name)
    key = key or name
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrap(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, awrap)
    else:

        @functools.wraps(fn)
        def wrap(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrap)


def instrument() -> list[str]:
    steps: list[tuple[Any, str, str]] = [
        (repo, "positions_of", "positions read"),
        (live.LiveBook, "positions_for", "positions (book)"),
        (repo, "states_of", "states read"),
        (Evaluator, "evaluate", "exact evaluation"),
        (service, "decide", "decide"),
        (service, "build_event", "documents: event"),
        (service, "snapshot_record", "documents: snapshot"),
        (repo, "state_args", "states: args"),
        (repo, "send_states", "states: upsert"),
        (repo, "log_book_change", "book_changes row"),
        (repo, "snapshot_copy", "snapshots: text"),
        (repo, "copy_snapshots", "snapshots: COPY"),
        (repo, "margin_event_copy", "margin_events: text"),
        (repo, "send_copy", "COPY (text) sends"),
        (repo, "outbox_records", "outbox: to_json"),
        (repo, "outbox_copy", "outbox: text"),
        (repo, "send_outbox", "outbox: COPY"),
    ]
    keys = []
    for owner, name, key in steps:
        if hasattr(owner, name):
            timed(owner, name, key)
            keys.append(key)
    return keys


async def main_async(args: argparse.Namespace) -> None:
    console = Console(width=150)
    keys = instrument()
    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    url = await factory.create("risk", SPEC.migrations_dir)
    engine = create_async_engine(normalise_database_url(url, service="risk"))
    rows: list[dict[str, float]] = []
    round_row: dict[str, float] = {}
    try:
        book = synthetic_book(args.accounts, N_ASSETS, 4, SEED)
        now = datetime.now(UTC)
        await populate(url, book, now)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        lb = live.LiveBook(engine.url, instance="bench")
        lb.owned[:] = True
        lb.lease_valid_until = float("inf")
        live.register(lb)
        t = time.perf_counter()
        await live.load(lb, sessions)
        load_s = time.perf_counter() - t
        move = Decimal(args.move)
        asset = ASSETS[TICK_ASSET]
        clock = now
        for k in range(args.ticks):
            clock += timedelta(milliseconds=10)
            price = book.price_exact[TICK_ASSET] * (move if k % 2 == 0 else 1)
            update = repo.PriceUpdate(
                asset, price.quantize(Decimal("1e-4")), "bench", clock, uuid.uuid4()
            )
            TIMES.clear()
            t = time.perf_counter()
            async with sessions() as s, s.begin():
                await service.apply_prices(s, [update])
            total = time.perf_counter() - t
            assert lb.last_tick is not None
            row = {k: v * 1e3 for k, v in TIMES.items()}
            row["tick"] = total * 1e3
            row["changed"] = lb.last_tick.changed
            row["filter"] = lb.last_tick.filter_ms
            rows.append(row)
        # a 20-asset round in one batch (bench.risk_live's prices)
        rng = np.random.default_rng(SEED + 2)
        clock += timedelta(milliseconds=10)
        batch = [
            repo.PriceUpdate(
                ASSETS[a],
                (
                    book.price_exact[a] * Decimal(str(round(float(rng.uniform(0.99, 1.01)), 4)))
                ).quantize(Decimal("1e-4")),
                "bench",
                clock,
                uuid.uuid4(),
            )
            for a in range(N_ASSETS)
        ]
        TIMES.clear()
        t = time.perf_counter()
        async with sessions() as s, s.begin():
            await service.apply_prices(s, batch)
        round_row = {k: v * 1e3 for k, v in TIMES.items()}
        round_row["tick"] = (time.perf_counter() - t) * 1e3
        assert lb.last_tick is not None
        round_row["changed"] = lb.last_tick.changed
        round_row["filter"] = lb.last_tick.filter_ms
        clock += timedelta(milliseconds=10)
        async with sessions() as s, s.begin():
            await service.apply_prices(
                s,
                [
                    repo.PriceUpdate(ASSETS[a], book.price_exact[a], "bench", clock, uuid.uuid4())
                    for a in range(N_ASSETS)
                ],
            )
        live.unregister(lb)
        if args.ticks % 2:  # back to x1, so the floor's x`move` moves the accounts a tick does
            clock += timedelta(milliseconds=10)
            async with sessions() as s, s.begin():
                await service.apply_prices(
                    s,
                    [
                        repo.PriceUpdate(
                            asset, book.price_exact[TICK_ASSET], "bench", clock, uuid.uuid4()
                        )
                    ],
                )
        floor = await persistence_floor(url, book, clock + timedelta(seconds=1), move, 5)
    finally:
        await engine.dispose()
        await factory.drop(url)
    warm = rows[1:] or rows
    table = Table(
        title=f"one pass in process: {args.accounts:,} accounts, x{args.move} ticks, "
        f"median of ticks 2-{len(rows)} (tick 1 in brackets); book loaded in {load_s:.1f} s"
    )
    for col in ("step", "ms per tick", "us per changed account"):
        table.add_column(col)
    changed = statistics.median(r["changed"] for r in warm)

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in warm)

    for key in ["tick", "filter", *keys]:
        if not any(key in r for r in rows):
            continue
        table.add_row(
            key,
            f"{med(key):,.1f} ({rows[0].get(key, 0.0):,.1f})",
            f"{med(key) / changed * 1e3:,.1f}",
        )
    table.add_row("accounts changed", f"{changed:,.0f} ({rows[0]['changed']:,})", "")
    console.print(table)
    console.print("20-asset round:", {k: round(v, 1) for k, v in round_row.items()})
    console.print(
        {k: round(v, 1) for k, v in floor["ms"].items()},
        {k: v for k, v in floor.items() if k != "ms"},
    )
    console.print(f"load average {psutil.getloadavg()} on {psutil.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--ticks", type=int, default=9)
    ap.add_argument("--move", default="0.85")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
