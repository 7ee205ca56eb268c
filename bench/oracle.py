"""Oracle benchmark: a polling round, aggregate-and-store throughput, OHLC history.

Run: .venv/bin/python -m bench.oracle [--feeds 50] [--store-rounds 40] [--queries 200]

1. One polling round over F feeds x 5 sources (Coinbase, Kraken, Binance, CoinGecko
   shapes from a local HTTP server in another process, and Chainlink on anvil behind the
   same server's delaying JSON-RPC proxy), every answer delayed 20-200 ms at random.
   Target: round time <= 1.5x the slowest source. "Slowest source" is shown two ways:
   the slowest latency the oracle measured in that round, and the 200 ms the server
   waits at most (a Chainlink read is two calls, so its floor is also 200 ms). Baseline,
   same run: the same observations awaited one after the other.
2. Aggregate-and-store: `store_round` (median, rules, COPY of observations, unnest of
   aggregates, rollup, state, health, outbox) for 500 feeds x 5 sources per round.
   Target >= 20,000 observations/s. Baseline: one INSERT per observation.
3. OHLC history over one year of 30-second aggregates (1,051,200 rows) of one pair, daily
   and hourly buckets, from the hourly rollup. Target p99 <= 50 ms. Baseline: the same
   buckets computed from the raw aggregates.

Runs on the test harness's PostgreSQL (the embedded one under .fusion-prime/test-pg, fsync
off, or TEST_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from fusion_prime.oracle import repository as repo
from fusion_prime.oracle.domain import Feed, Observation, SourceRef
from fusion_prime.oracle.service import price_history, put_feed, store_round
from fusion_prime.oracle.sources import SourceSet, SourceUrls
from fusion_prime.oracle.spec import SPEC
from fusion_prime.platform.database import normalise_database_url

REPO = Path(__file__).resolve().parent.parent
KINDS = ("coinbase", "kraken", "binance", "coingecko", "chainlink")
# The price APIs for the round: an asyncio server (aiohttp) in its own process, the
# response shapes of tests/oracle/fakes.py, every answer delayed 20-200 ms at random;
# POST is a delaying proxy in front of anvil (the Chainlink source's JSON-RPC).
FAKE_SERVER = """
import asyncio, random, sys
sys.path.insert(0, sys.argv[1])
import aiohttp
from aiohttp import web
from tests.oracle.fakes import Behaviour, binance, coinbase, coingecko, kraken

upstream, n = sys.argv[2], int(sys.argv[3])
ok = Behaviour()
prices = {}
for i in range(n):
    for kind, sym in (("coinbase", f"C{i}-USD"), ("kraken", f"C{i}USD"),
                      ("binance", f"C{i}USDT"), ("coingecko", f"coin-{i}")):
        prices[(kind, sym)] = str(1000 + i)

def route(kind, render, key):
    async def handle(req):
        await asyncio.sleep(random.uniform(0.02, 0.2))
        sym = key(req)
        status, body = render(ok, sym, prices.get((kind, sym)))
        return web.Response(status=status, text=body, content_type="application/json")
    return handle

async def rpc(req):
    await asyncio.sleep(random.uniform(0.02, 0.2))
    body = await req.read()
    async with req.app["client"].post(upstream, data=body,
                                      headers={"Content-Type": "application/json"}) as r:
        return web.Response(status=r.status, body=await r.read(),
                            content_type="application/json")

async def main():
    app = web.Application()
    app["client"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app.router.add_get("/products/{sym}/ticker",
                       route("coinbase", coinbase, lambda r: r.match_info["sym"]))
    app.router.add_get("/0/public/Ticker", route("kraken", kraken, lambda r: r.query["pair"]))
    app.router.add_get("/api/v3/ticker/price",
                       route("binance", binance, lambda r: r.query["symbol"]))
    app.router.add_get("/api/v3/simple/price",
                       route("coingecko", coingecko, lambda r: r.query["ids"]))
    app.router.add_post("/", rpc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    print(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def symbols(i: int, address: str) -> tuple[SourceRef, ...]:
    return (
        SourceRef("coinbase", f"C{i}-USD"),
        SourceRef("kraken", f"C{i}USD"),
        SourceRef("binance", f"C{i}USDT"),
        SourceRef("coingecko", f"coin-{i}"),
        SourceRef("chainlink", address),
    )


async def bench_round(console: Console, n_feeds: int) -> list[tuple[str, ...]]:
    from tests.evm import compile_solidity, deploy, running_anvil

    artifact = compile_solidity(REPO / "tests/oracle/contracts/TestAggregator.sol")
    with running_anvil() as node:
        now = int(time.time())
        addresses = []
        for i in range(n_feeds):
            c = deploy(node, artifact["TestAggregator"], 8)
            tx = c.functions.setRound(1, (1000 + i) * 10**8, now, now, 1).transact(
                {"from": c.w3.eth.accounts[0]}
            )
            c.w3.eth.wait_for_transaction_receipt(tx)
            addresses.append(c.address)
        server = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER, str(REPO), node.url, str(n_feeds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            feeds = [Feed(f"C{i}-USD", symbols(i, addresses[i])) for i in range(n_feeds)]
            sources = SourceSet.from_urls(SourceUrls(url, url, url, url, url), timeout=10)
            rows = []
            try:
                await sources.collect(feeds[:2])  # warm up connections and imports
                for attempt in range(3):
                    t0 = time.perf_counter()
                    got = await sources.collect(feeds)
                    took = time.perf_counter() - t0
                    obs = [o for os_ in got.values() for o in os_]
                    bad = [o for o in obs if o.error]
                    slowest = max(o.latency_ms for o in obs) / 1000
                    rows.append(
                        (
                            f"parallel round {attempt + 1}",
                            f"{len(obs)}",
                            f"{len(bad)}",
                            f"{took:.3f}",
                            f"{slowest:.3f}",
                            f"{took / slowest:.2f}x",
                            f"{took / 0.2:.2f}x",
                        )
                    )
                t0 = time.perf_counter()
                seq = [await sources.observe(f.pair, ref) for f in feeds for ref in f.sources]
                took = time.perf_counter() - t0
                slowest = max(o.latency_ms for o in seq) / 1000
                rows.append(
                    (
                        "sequential baseline",
                        f"{len(seq)}",
                        f"{sum(1 for o in seq if o.error)}",
                        f"{took:.3f}",
                        f"{slowest:.3f}",
                        f"{took / slowest:.2f}x",
                        f"{took / 0.2:.2f}x",
                    )
                )
            finally:
                await sources.close()
        finally:
            server.terminate()
            server.wait()
    return rows


def synthetic(n_feeds: int, at: datetime) -> tuple[list[Feed], dict[str, list[Observation]]]:
    feeds = [Feed(f"S{i}-USD", tuple(SourceRef(k, "x") for k in KINDS)) for i in range(n_feeds)]
    obs = {
        f.pair: [
            Observation(f.pair, k, Decimal(1000 + i) + Decimal(j) / 100, at, at, 50)
            for j, k in enumerate(KINDS)
        ]
        for i, f in enumerate(feeds)
    }
    return feeds, obs


def prepared_rounds(
    n_feeds: int, rounds: int, start: datetime, step: Decimal
) -> list[tuple[list[Feed], dict[str, list[Observation]], datetime]]:
    """Rounds built before the clock starts; the price moves by `step` each round."""
    out = []
    for r in range(rounds):
        at = start + timedelta(seconds=30 * r)
        feeds, obs = synthetic(n_feeds, at)
        factor = 1 + step * r
        moved = {
            pair: [
                Observation(o.pair, o.source, o.value * factor, o.source_time, o.observed_at, 50)
                for o in os_
            ]
            for pair, os_ in obs.items()
        }
        out.append((feeds, moved, at))
    return out


async def bench_store(url: str, rounds: int) -> list[tuple[str, ...]]:
    engine = create_async_engine(normalise_database_url(url, service="bench"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    rows = []
    n_feeds = 500
    try:
        start = datetime.now(UTC) - timedelta(days=2)
        cases = (
            ("store_round, every aggregate published (1 % moves)", Decimal("0.01"), start),
            (
                "store_round, few published (0.01 % moves)",
                Decimal("0.0001"),
                start + timedelta(days=1),
            ),
        )
        for label, step, t0_at in cases:
            work = prepared_rounds(n_feeds, rounds, t0_at, step)
            events0 = await _count(sessions, "outbox")
            t0 = time.perf_counter()
            for feeds, obs, at in work:
                async with sessions() as s, s.begin():
                    await store_round(s, feeds, obs, at)
            took = time.perf_counter() - t0
            n = rounds * n_feeds * 5
            events = await _count(sessions, "outbox") - events0
            rows.append((label, f"{n}", f"{events}", f"{took:.2f}", f"{n / took:,.0f}"))

        base_n = 5000
        _, obs = synthetic(base_n // 5, start)
        flat = [o for os_ in obs.values() for o in os_]
        t0 = time.perf_counter()
        async with sessions() as s, s.begin():
            for o in flat:
                await s.execute(
                    text(
                        "INSERT INTO observations (pair, source, value, source_time, "
                        "observed_at, latency_ms, status) VALUES (:p, :s, :v, :t, :t, 50, 'used')"
                    ),
                    {"p": o.pair, "s": o.source, "v": o.value, "t": o.observed_at},
                )
        took = time.perf_counter() - t0
        rows.append(
            (
                "baseline: one INSERT per observation (no aggregation)",
                f"{base_n}",
                "0",
                f"{took:.2f}",
                f"{base_n / took:,.0f}",
            )
        )
    finally:
        await engine.dispose()
    return rows


async def _count(sessions: async_sessionmaker[AsyncSession], table: str) -> int:
    async with sessions() as s:
        return int((await s.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def bench_history(url: str, queries: int) -> list[tuple[str, ...]]:
    engine = create_async_engine(normalise_database_url(url, service="bench"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    end = datetime(2026, 12, 1, tzinfo=UTC)
    start = end - timedelta(days=365)
    rows = []
    try:
        async with sessions() as s, s.begin():
            await put_feed(s, Feed("YEAR-USD", (SourceRef("coinbase", "Y-USD"),), quorum=1))
        # a year of 30 s aggregates, and the same hourly rollup store_round keeps
        async with sessions() as s, s.begin():
            await s.execute(
                text(
                    "INSERT INTO aggregates (pair, price, observed_at, sources, spread, "
                    "published) SELECT 'YEAR-USD', round((3000 + 500 * sin(g / 5000.0) + "
                    "(g % 97))::numeric, 2), "
                    "CAST(:start AS timestamptz) + g * interval '30 seconds', '[]', 0, false "
                    "FROM generate_series(0, 1051199) AS g"
                ),
                {"start": start},
            )
            await s.execute(
                text(
                    "INSERT INTO aggregate_hours SELECT pair, date_trunc('hour', observed_at), "
                    "(array_agg(price ORDER BY observed_at))[1], max(price), min(price), "
                    "(array_agg(price ORDER BY observed_at DESC))[1], min(observed_at), "
                    "max(observed_at), count(*) FROM aggregates WHERE pair = 'YEAR-USD' "
                    "GROUP BY 1, 2"
                )
            )
            await s.execute(text("ANALYZE aggregates"))
            await s.execute(text("ANALYZE aggregate_hours"))

        async def timed(fn: Any, n: int) -> list[float]:
            out = []
            for _ in range(n):
                async with sessions() as s, s.begin():
                    t0 = time.perf_counter()
                    await fn(s)
                    out.append((time.perf_counter() - t0) * 1000)
            return out

        def stats(name: str, ms: list[float], buckets: int) -> tuple[str, ...]:
            ms.sort()
            p99 = ms[max(0, int(len(ms) * 0.99) - 1)]
            return (name, str(buckets), f"{statistics.median(ms):.1f}", f"{p99:.1f}")

        for label, secs in (("1 year, daily", 86400), ("1 year, hourly", 3600)):
            async with sessions() as s, s.begin():
                got = await price_history(s, "YEAR-USD", start, end, secs)
                raw = await repo.history(s, "YEAR-USD", start, end, secs)
                # same buckets from the raw rows (the baseline) as from the rollup
                base = await s.execute(
                    repo._HISTORY_RAW,
                    {"pair": "YEAR-USD", "start": start, "end": end, "secs": secs},
                )
                base_rows = base.all()
                assert len(raw) == len(base_rows) == len(got)
                assert all(
                    a.open == b.open and a.close == b.close and a.high == b.high
                    for a, b in zip(raw, base_rows, strict=True)
                )

            async def rollup(s: AsyncSession, secs: int = secs) -> None:
                await price_history(s, "YEAR-USD", start, end, secs)

            async def baseline(s: AsyncSession, secs: int = secs) -> None:
                params = {"pair": "YEAR-USD", "start": start, "end": end, "secs": secs}
                (await s.execute(repo._HISTORY_RAW, params)).all()

            rows.append(
                stats(f"{label}: API query (rollup)", await timed(rollup, queries), len(got))
            )
            # the raw baseline takes long per query: 20 runs are enough for its percentiles
            rows.append(stats(f"{label}: baseline (raw)", await timed(baseline, 20), len(got)))
    finally:
        await engine.dispose()
    return rows


async def with_db(fn: Any, *args: Any) -> Any:
    from tests.harness import DatabaseFactory, admin_url_from_env

    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    url = await factory.create("oracle", SPEC.migrations_dir)
    try:
        return await fn(url, *args)
    finally:
        await factory.drop(url)


def table(console: Console, title: str, cols: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--feeds", type=int, default=50)
    ap.add_argument("--store-rounds", type=int, default=40)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    console = Console(width=150)
    rows = asyncio.run(bench_round(console, args.feeds))
    table(
        console,
        f"1. one polling round, {args.feeds} feeds x 5 sources, answers 20-200 ms",
        (
            "run",
            "observations",
            "failed",
            "round s",
            "slowest measured s",
            "round / slowest",
            "round / 0.2 s",
        ),
        rows,
    )
    rows = asyncio.run(with_db(bench_store, args.store_rounds))
    table(
        console,
        "2. aggregate and store, 500 feeds x 5 sources per round",
        ("path", "observations", "events", "seconds", "obs/s"),
        rows,
    )
    rows = asyncio.run(with_db(bench_history, args.queries))
    table(
        console,
        "3. OHLC history, 1 year of 30 s aggregates (1,051,200 rows), one pair",
        ("query", "buckets", "p50 ms", "p99 ms"),
        rows,
    )


if __name__ == "__main__":
    main()
