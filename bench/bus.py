"""Event bus benchmark: outbox -> relay -> postgres broker -> consumer -> inbox + effect row.

Run: .venv/bin/python -m bench.bus [--events N] [--rate R] [--seconds S]

Runs on its own embedded PostgreSQL under .fusion-prime/bench-pg with the server's
default durability (fsync and synchronous_commit on), unlike the test server. As in the
real topology, the relay runs in the producing process and the consumer in another
process (the consuming service), each with its own event loop.

1. Throughput: N events committed to the outbox first, then the relay and the consumer
   are started and the clock runs until the last effect row is committed. Baseline, same
   run: one transaction per event everywhere (relay batch 1, lease batch 1, a per-event
   handler).
2. Latency at a fixed rate: a producer commits one event per transaction (the real
   `publish_envelope`) at R events/s; latency = the effect row's clock_timestamp()
   (taken inside the consuming transaction, which commits right after) minus the
   producer's wall clock when its commit returned. Same for the naive configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform.admin import asyncpg_dsn, ensure_database, quote_ident
from fusion_prime.platform.bus.consumer import Consumer
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler
from fusion_prime.platform.bus.outbox import OutboxRow, publish_envelope, publish_rows
from fusion_prime.platform.bus.postgres import PostgresBroker, migrate_bus
from fusion_prime.platform.bus.wiring import BusWorkers, running
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.embedded import EmbeddedPostgres
from fusion_prime.platform.migrations import upgrade_url
from fusion_prime.platform.settings import BaseServiceSettings

REPO = Path(__file__).resolve().parent.parent
SERVICE_MIGRATIONS = REPO / "tests" / "platform" / "bus" / "consumerapp" / "migrations"
TOPIC = "bench.stream.v1"
SUBSCRIPTION = "bench-consumer"
BATCH = 500
CONCURRENCY = 2

_EFFECTS = text(
    "INSERT INTO effects (event_id, subject, n, applied_at) "
    "SELECT id, s, n, clock_timestamp() FROM unnest(CAST(:ids AS uuid[]), "
    "CAST(:subjects AS text[]), CAST(:ns AS int[])) AS x(id, s, n)"
)


@batch_handler
async def batch_effects(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
    await session.execute(
        _EFFECTS,
        {
            "ids": [e.id for e in envelopes],
            "subjects": [e.subject for e in envelopes],
            "ns": [int(e.data["n"]) for e in envelopes],
        },
    )


async def one_effect(session: AsyncSession, envelope: Envelope) -> None:
    await session.execute(
        text(
            "INSERT INTO effects (event_id, subject, n, applied_at) "
            "VALUES (:id, :s, :n, clock_timestamp())"
        ),
        {"id": envelope.id, "s": envelope.subject, "n": int(envelope.data["n"])},
    )


def events(n: int, subjects: int = 1000) -> list[Envelope]:
    return [
        Envelope(type="bench.tick", source="bench", subject=f"s{i % subjects}", data={"n": i})
        for i in range(n)
    ]


class Stack:
    """A fresh service database and bus database for one measurement."""

    def __init__(self, server: EmbeddedPostgres, label: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.server = server
        self.db_name = f"fp_bench_svc_{label}_{suffix}"
        self.bus_name = f"fp_bench_bus_{label}_{suffix}"
        self.db_url = server.url(self.db_name)
        self.bus_url = server.url(self.bus_name)

    async def create(self) -> None:
        admin = self.server.url()
        for name in (self.db_name, self.bus_name):
            await ensure_database(admin, name)
        await upgrade_url(normalise_database_url(self.db_url, service="bench"), SERVICE_MIGRATIONS)
        await migrate_bus(self.bus_url, sync_registry=False)
        async with PostgresBroker(self.bus_url, pool_size=1) as b:
            await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)

    async def drop(self) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(self.server.url()))
        try:
            for name in (self.db_name, self.bus_name):
                await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()


def settings(stack: Stack, naive: bool) -> BaseServiceSettings:
    return BaseServiceSettings(
        DATABASE_URL=stack.db_url,
        FP_BUS_URL=stack.bus_url,
        FP_BUS_BATCH_SIZE="1" if naive else str(BATCH),
        FP_BUS_POLL_INTERVAL="0.5",
        FP_BUS_CONSUMER_CONCURRENCY=str(CONCURRENCY),
    )


async def count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def fill_outbox(db_url: str, batch: Sequence[Envelope]) -> None:
    """Commit the events into the outbox through the set-based publisher, 5,000 a time."""
    engine = create_engine(normalise_database_url(db_url, service="bench"), pool_size=1)
    try:
        for i in range(0, len(batch), 5000):
            async with async_sessionmaker(engine)() as session, session.begin():
                await publish_rows(
                    session,
                    [
                        OutboxRow(e.id, TOPIC, e.subject, e.type, e.to_json())
                        for e in batch[i : i + 5000]
                    ],
                )
    finally:
        await engine.dispose()


def relay_workers(stack: Stack, naive: bool) -> tuple[BusWorkers, Any]:
    engine = create_engine(normalise_database_url(stack.db_url, service="bench"), pool_size=4)
    w = BusWorkers(
        "bench-producer",
        settings(stack, naive),
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        publishes=True,
        consumers=[],
    )
    return w, engine


async def serve_consumer(db_url: str, bus_url: str, naive: bool, batch: int, conc: int) -> None:
    """Body of the consumer process: the consumer loops until SIGTERM."""
    global BATCH, CONCURRENCY
    BATCH, CONCURRENCY = batch, conc
    stack = Stack.__new__(Stack)
    stack.db_url, stack.bus_url = db_url, bus_url
    engine = create_engine(normalise_database_url(db_url, service="bench"), pool_size=4)
    w = BusWorkers(
        "bench-consumer",
        settings(stack, naive),
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        publishes=False,
        consumers=[Consumer(TOPIC, SUBSCRIPTION, one_effect if naive else batch_effects)],
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with running(w):
        await asyncio.sleep(0.3)
        print("ready", flush=True)
        await stop.wait()
    await engine.dispose()


@contextlib.contextmanager
def consumer_process(stack: Stack, naive: bool) -> Iterator[None]:
    args = [sys.executable, "-m", "bench.bus", "--serve-consumer", stack.db_url, stack.bus_url]
    args += ["--batch", str(BATCH), "--concurrency", str(CONCURRENCY)]
    if naive:
        args.append("--naive")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"consumer process did not start: {line!r}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def throughput(server: EmbeddedPostgres, n: int, naive: bool) -> float:
    stack = Stack(server, "naive" if naive else "batched")
    await stack.create()
    try:
        await fill_outbox(stack.db_url, events(n))
        w, engine = relay_workers(stack, naive)
        with consumer_process(stack, naive):
            t0 = time.perf_counter()
            async with running(w):
                while await count(stack.db_url, "SELECT count(*) FROM effects") < n:
                    await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
        await engine.dispose()
        applied = await count(stack.db_url, "SELECT count(DISTINCT event_id) FROM effects")
        assert applied == n, f"{applied} != {n}"
        return n / elapsed
    finally:
        await stack.drop()


async def latency(
    server: EmbeddedPostgres, rate: float, seconds: float, naive: bool
) -> tuple[list[float], float]:
    """Per-event commit-to-effect latency (s) and the rate actually produced."""
    stack = Stack(server, "lat_naive" if naive else "lat_batched")
    await stack.create()
    try:
        w, engine = relay_workers(stack, naive)
        producer = create_engine(normalise_database_url(stack.db_url, service="p"), pool_size=8)
        sessions = async_sessionmaker(producer, expire_on_commit=False)
        committed: dict[uuid.UUID, float] = {}
        total = int(rate * seconds)
        with consumer_process(stack, naive):
            async with running(w):
                await asyncio.sleep(0.5)  # loops up and listening

                async def produce(env: Envelope) -> None:
                    # one transaction per event, like a request handler; requests overlap
                    async with sessions() as s, s.begin():
                        await publish_envelope(s, TOPIC, env)
                    committed[env.id] = time.time()

                start = time.perf_counter()
                tasks = []
                for i, env in enumerate(events(total)):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(produce(env)))
                await asyncio.gather(*tasks)
                produced_rate = total / (time.perf_counter() - start)
                deadline = time.monotonic() + 120
                while await count(stack.db_url, "SELECT count(*) FROM effects") < total:
                    if time.monotonic() > deadline:
                        raise TimeoutError("effects did not arrive")
                    await asyncio.sleep(0.05)
        await engine.dispose()
        await producer.dispose()
        conn = await asyncpg.connect(asyncpg_dsn(stack.db_url))
        try:
            rows = await conn.fetch(
                "SELECT event_id, extract(epoch FROM applied_at) AS t FROM effects"
            )
        finally:
            await conn.close()
        return [float(r["t"]) - committed[r["event_id"]] for r in rows], produced_rate
    finally:
        await stack.drop()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def run(args: argparse.Namespace) -> None:
    global BATCH, CONCURRENCY
    BATCH = args.batch
    CONCURRENCY = args.concurrency
    console = Console()
    server = EmbeddedPostgres(REPO / ".fusion-prime" / "bench-pg")
    started_here = not server.running()
    server.start()
    try:
        console.print(f"throughput: {args.events} events, batched ...")
        fast = await throughput(server, args.events, naive=False)
        console.print(f"throughput: {args.naive_events} events, naive ...")
        slow = await throughput(server, args.naive_events, naive=True)
        console.print(f"latency at {args.rate}/s for {args.seconds} s, batched ...")
        lat, rate_b = await latency(server, args.rate, args.seconds, naive=False)
        console.print(f"latency at {args.rate}/s for {args.seconds} s, naive ...")
        lat_n, rate_n = await latency(server, args.rate, args.seconds, naive=True)
    finally:
        if started_here:
            server.stop()

    table = Table(title="event bus (postgres broker, fsync on; relay and consumer processes)")
    for col in ("measure", "bus (batched)", "naive baseline", "target"):
        table.add_column(col)
    table.add_row(
        "end-to-end throughput",
        f"{fast:,.0f} events/s",
        f"{slow:,.0f} events/s",
        ">= 5,000 events/s",
    )

    def ms(xs: list[float], p: float) -> str:
        return f"{pct(xs, p) * 1000:.1f} ms"

    table.add_row("produced rate", f"{rate_b:.0f}/s", f"{rate_n:.0f}/s", f"{args.rate}/s")
    table.add_row("commit-to-effect p50", ms(lat, 50), ms(lat_n, 50), "<= 50 ms")
    table.add_row("commit-to-effect p99", ms(lat, 99), ms(lat_n, 99), "<= 250 ms")
    table.add_row(
        "commit-to-effect max",
        f"{max(lat) * 1000:.1f} ms",
        f"{max(lat_n) * 1000:.1f} ms",
        "",
    )
    table.add_row(
        "mean",
        f"{statistics.mean(lat) * 1000:.1f} ms",
        f"{statistics.mean(lat_n) * 1000:.1f} ms",
        "",
    )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-consumer", nargs=2, metavar=("DB_URL", "BUS_URL"))
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=3_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500, help="FP_BUS_BATCH_SIZE of the bus")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="FP_BUS_CONSUMER_CONCURRENCY of the bus"
    )
    args = parser.parse_args()
    if args.serve_consumer:
        db_url, bus_url = args.serve_consumer
        asyncio.run(serve_consumer(db_url, bus_url, args.naive, args.batch, args.concurrency))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
