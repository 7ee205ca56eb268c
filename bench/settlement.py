"""Settlement benchmark: chain-event ingestion and `GET /escrows/{address}` latency.

Run: .venv/bin/python -m bench.settlement [--escrows N] [--e2e-events N] [--rate R]

1. Ingestion: envelopes as JSON (what a broker hands over) -> Envelope -> the real
   `handle_chain_events` batch handler through `consume_batch`, one transaction per batch,
   into the settlement tables (escrows, approvals, history, chain_events, inbox, outbox,
   webhook deliveries). Baseline in the same run: the same handler, one transaction per
   event (what a naive consumer does).
2. End to end, broker -> settlement tables: on its own embedded PostgreSQL with the
   server's default durability (fsync and synchronous_commit on, .fusion-prime/bench-pg,
   like bench.bus), a bus database migrated with `migrate_bus` (registry subscriptions
   declared) and a fresh settlement database. N chain events (escrow lifecycles: deployed,
   1-3 approvals, released or refunded, lifecycles interleaved as on chain) are published
   on `settlement.events.v1` through the broker's publish API (no outbox: the indexer is
   outside this system), then a consumer process wired as the settlement service wires
   its bus (`BusWorkers` with the registry's consumer `settlement-events-consumer` ->
   `handle_chain_events`, the service's outbox relay, FP_BUS_* defaults) is told to
   start; the clock runs from that moment until the broker holds no unacknowledged
   message (an ack follows the commit of the settlement transaction). The tables are
   checked afterwards (every event in the history, expected final statuses, no anomaly,
   nothing parked or dead-lettered). Baseline in the same run: the same path with
   FP_BUS_BATCH_SIZE=1 (one lease, one settlement transaction, one ack per event) on a
   smaller N.
3. Latency: a real `fusion-prime serve settlement` process (one worker) answering
   `GET /escrows/{address}` under an open-loop load generator at a fixed rate on
   127.0.0.1; latency counted from each request's scheduled send time (no coordinated
   omission). Baseline in the same run: `GET /health/live` (no database) at the same
   rate, the floor of the HTTP stack and the generator itself.

Data is generated at run time in a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform.admin import asyncpg_dsn, ensure_database
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume, consume_batch
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker, migrate_bus
from fusion_prime.platform.bus.wiring import BusWorkers, consumers_for, running
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.embedded import EmbeddedPostgres
from fusion_prime.platform.observability import configure_logging
from fusion_prime.settlement.events import parse_envelope
from fusion_prime.settlement.handlers import SUBSCRIPTION, handle_chain_events
from fusion_prime.settlement.service import ingest
from fusion_prime.settlement.spec import SPEC
from tests.harness import (
    DatabaseFactory,
    ServiceProcess,
    admin_url_from_env,
    count_rows,
    fetch,
)
from tests.settlement.factory import WEBHOOK_KEY, Escrow

BATCH = 500
REPO = Path(__file__).resolve().parent.parent
TOPIC = "settlement.events.v1"
E2E_TIMEOUT = 600.0


def _workload(escrows: int) -> list[str]:
    """Four events per escrow (deploy, two approvals, release) as broker JSON, chain order."""
    out: list[str] = []
    for _ in range(escrows):
        e = Escrow()
        out += [
            e.deployed(required=2).to_json(),
            e.approved(e.payer).to_json(),
            e.approved(e.payee).to_json(),
            e.released().to_json(),
        ]
    return out


async def _one_at_a_time(session: AsyncSession, envelope: Envelope) -> None:
    """The naive consumer: the same rules, one event per call and per transaction."""
    await ingest(session, [(envelope.id, parse_envelope(envelope))])


async def _ingest(url: str, raw: Sequence[str], *, batched: bool) -> float:
    engine = create_engine(normalise_database_url(url, service="bench"), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        started = time.perf_counter()
        if batched:
            for i in range(0, len(raw), BATCH):
                envelopes = [Envelope.from_json(r) for r in raw[i : i + BATCH]]
                async with sessions() as session, session.begin():
                    await consume_batch(session, SUBSCRIPTION, envelopes, handle_chain_events)
        else:
            for r in raw:
                envelope = Envelope.from_json(r)
                async with sessions() as session, session.begin():
                    await consume(session, SUBSCRIPTION, envelope, _one_at_a_time)
        return time.perf_counter() - started
    finally:
        await engine.dispose()


# -- end to end: broker -> consumer process -> settlement tables ------------------------


def _lifecycles(n_events: int, seed: int = 4) -> tuple[list[Envelope], dict[str, int]]:
    """Escrow lifecycles until `n_events`, interleaved across escrows as blocks mix them.

    Mix: 60 % approved by 1-3 distinct parties then released, 20 % refunded right after
    deployment, 10 % refunded after some approvals, 10 % still open at the end (some
    approvals, no terminal event). Returns the events in chain order and the final status
    expected per escrow, counted by status.
    """
    rng = random.Random(seed)
    lifecycles: list[list[Envelope]] = []
    expected = {"created": 0, "approved": 0, "released": 0, "refunded": 0}
    total = 0
    while total < n_events:
        e = Escrow()
        required = rng.randint(1, 3)
        parties = rng.sample([e.payer, e.payee, e.arbiter], 3)
        events = [e.deployed(amount=rng.randint(1, 10**24), required=required)]
        roll = rng.random()
        if roll < 0.6:
            events += [e.approved(a) for a in parties[:required]]
            events.append(e.released())
            final = "released"
        elif roll < 0.8:
            events.append(e.refunded())
            final = "refunded"
        elif roll < 0.9:
            events += [e.approved(a) for a in parties[: rng.randint(1, required)]]
            events.append(e.refunded())
            final = "refunded"
        else:
            k = rng.randint(0, required)
            events += [e.approved(a) for a in parties[:k]]
            final = "approved" if k == required else "created"
        lifecycles.append(events[::-1])  # reversed: pop() yields chain order
        expected[final] += 1
        total += len(events)
    # a window of open escrows; each step emits the next event of a random one of them
    out: list[Envelope] = []
    todo = lifecycles[::-1]
    window: list[list[Envelope]] = []
    while todo or window:
        while todo and len(window) < 256:
            window.append(todo.pop())
        i = rng.randrange(len(window))
        out.append(window[i].pop())
        if not window[i]:
            window[i] = window[-1]
            window.pop()
    return out, expected


async def _publish(bus_url: str, events: Sequence[Envelope]) -> float:
    """Hand the events to the broker (durable, fanned out to the subscriptions)."""
    async with PostgresBroker(bus_url, pool_size=1, app_name="bench-indexer") as broker:
        started = time.perf_counter()
        for i in range(0, len(events), 1000):
            await broker.publish(
                [
                    OutgoingEvent(e.id, TOPIC, e.subject, e.type, e.to_json())
                    for e in events[i : i + 1000]
                ]
            )
        return time.perf_counter() - started


async def serve_consumer(db_url: str, bus_url: str, batch: int) -> None:
    """Body of the consumer process: the settlement service's bus wiring, started on "go".

    Same engine, settings and `BusWorkers` as the service's lifespan builds (consumers
    from the registry, the outbox relay since settlement publishes); the HTTP server and
    the webhook/command workers are left out, they take no part in ingestion.
    """
    from fusion_prime.settlement.settings import SettlementSettings

    settings = SettlementSettings(
        DATABASE_URL=db_url,
        FP_BUS_URL=bus_url,
        FP_BUS_BATCH_SIZE=str(batch),
        SETTLEMENT_WEBHOOK_KEY=WEBHOOK_KEY,
    )
    assert settings.database_url is not None
    configure_logging(settings.log_level)  # as the runner does: JSON on stderr, INFO
    engine = create_engine(
        normalise_database_url(settings.database_url, service=SPEC.name),
        pool_size=settings.db_pool_size,
        app_name=SPEC.name,
    )
    workers = BusWorkers(
        SPEC.name,
        settings,
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        publishes=bool(SPEC.publishes),
        consumers=consumers_for(SPEC),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    go = await loop.run_in_executor(None, sys.stdin.readline)
    if go.strip() == "go":
        async with running(workers):
            await stop.wait()
    await engine.dispose()


_BUS_STATE = """
SELECT count(*) AS total, count(*) FILTER (WHERE acked_at IS NULL) AS pending,
       (SELECT count(*) FROM bus_dead_letters WHERE subscription = $1) AS dead
FROM bus_messages WHERE subscription = $1
"""


async def _end_to_end(
    admin_url: str, factory: DatabaseFactory, n_events: int, batch: int
) -> tuple[int, float]:
    """Publish, start the consumer process, time until the broker holds no unacked message."""
    events, expected = _lifecycles(n_events)
    db_url = await factory.create("settlement", SPEC.migrations_dir)
    bus_name = f"fp_t_bus_{uuid.uuid4().hex[:10]}"
    bus_url = factory.url(bus_name)
    try:
        await ensure_database(admin_url, bus_name)
        await migrate_bus(bus_url)  # registry topics and subscriptions, as deployed
        await _register_webhook(db_url)
        await _publish(bus_url, events)
        bus = await asyncpg.connect(asyncpg_dsn(bus_url))
        try:
            state = await bus.fetchrow(_BUS_STATE, SUBSCRIPTION)
            assert state["total"] == len(events), dict(state)
            with tempfile.TemporaryFile() as stderr:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.settlement",
                    "--serve-consumer",
                    db_url,
                    bus_url,
                    "--batch",
                    str(batch),
                    cwd=REPO,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                )
                assert proc.stdin is not None
                assert proc.stdout is not None
                drain: asyncio.Task[bytes] | None = None
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 60)
                    if b"ready" not in line:
                        raise RuntimeError(f"consumer process did not start: {line!r}")
                    # keep the pipe drained: a full pipe would block the child's event loop
                    drain = asyncio.create_task(proc.stdout.read())
                    started = time.perf_counter()
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                    deadline = time.monotonic() + E2E_TIMEOUT
                    while True:
                        state = await bus.fetchrow(_BUS_STATE, SUBSCRIPTION)
                        if state["dead"]:
                            raise RuntimeError(f"dead letters: {dict(state)}")
                        if state["pending"] == 0:
                            break
                        if time.monotonic() > deadline or proc.returncode is not None:
                            stderr.seek(0)
                            tail = stderr.read()[-2000:].decode(errors="replace")
                            raise TimeoutError(f"not drained: {dict(state)}\n{tail}")
                        await asyncio.sleep(0.05)
                    elapsed = time.perf_counter() - started
                finally:
                    if proc.returncode is None:
                        proc.terminate()
                    await asyncio.wait_for(proc.wait(), 30)
                    if drain is not None:
                        await asyncio.wait_for(drain, 30)
        finally:
            await bus.close()
        # every event applied, in order: history complete, statuses as the lifecycles end
        assert await count_rows(db_url, "chain_events") == len(events)
        assert await count_rows(db_url, "escrow_history") == len(events)
        assert await count_rows(db_url, "escrow_anomalies") == 0
        assert await count_rows(db_url, "parked_events") == 0
        for status, n in expected.items():
            got = await count_rows(db_url, "escrows", f"status = '{status}'")
            assert got == n, f"{status}: {got} != {n}"
        return len(events), elapsed
    finally:
        await factory.drop(db_url)
        await factory.drop(bus_url)


async def _register_webhook(url: str) -> None:
    """One subscribed endpoint, so each state change also writes its delivery row."""
    from fusion_prime.settlement.settings import SettlementSettings
    from fusion_prime.settlement.webhooks import create_endpoint, settings_cipher

    settings = SettlementSettings(DATABASE_URL=url, SETTLEMENT_WEBHOOK_KEY=WEBHOOK_KEY)
    engine = create_engine(normalise_database_url(url, service="bench"), pool_size=1)
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            await create_endpoint(
                session,
                settings_cipher(settings),
                "http://127.0.0.1:9/unreachable",
                ["escrow.created", "escrow.approved", "escrow.released"],
            )
    finally:
        await engine.dispose()


async def _load(
    base_url: str,
    paths: Sequence[str],
    rate: float,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> tuple[list[float], int]:
    """Open loop: request i is due at t0 + i/rate whatever happened to earlier ones."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=5.0, limits=limits, headers=headers
    ) as client:

        async def one(due: float, path: str) -> None:
            nonlocal errors
            try:
                r = await client.get(path)
                if r.status_code != 200:
                    errors += 1
                    return
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        t0 = time.perf_counter() + 0.1
        tasks = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, paths[i % len(paths)])))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    return latencies, errors


async def _server_buckets(base_url: str, route: str) -> dict[float, float]:
    """Cumulative counts of the service's own latency histogram for one route (200s)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
        body = (await client.get("/metrics")).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(body):
        if family.name != "fp_http_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("route") == route
                and labels.get("status") == "200"
            ):
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The histogram bucket bound under which a fraction q of the new requests finished."""
    diff = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = diff[-1][1] if diff else 0.0
    for le, count in diff:
        if total and count >= q * total:
            return f"<= {le * 1000:g}"
    return "n/a"


def _pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def main(
    escrows: int,
    baseline_escrows: int,
    rate: float,
    seconds: float,
    e2e_events: int,
    e2e_baseline_events: int,
) -> None:
    console = Console()
    # structlog's default prints the handler's per-batch debug lines; the load generator's
    # per-request httpx INFO lines would cost it time: warnings only in this process
    configure_logging("WARNING")
    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    url = await factory.create("settlement", SPEC.migrations_dir)
    base_url = await factory.create("settlement", SPEC.migrations_dir)
    try:
        await _register_webhook(url)
        await _register_webhook(base_url)
        work = _workload(escrows)
        base_work = _workload(baseline_escrows)
        console.print(f"ingesting {len(work)} events in batches of {BATCH} ...")
        batched = await _ingest(url, work, batched=True)
        console.print(f"baseline: {len(base_work)} events, one transaction each ...")
        naive = await _ingest(base_url, base_work, batched=False)
        assert await count_rows(url, "escrows", "status = 'released'") == escrows
        assert await count_rows(url, "escrow_history") == len(work)
        assert await count_rows(base_url, "escrow_history") == len(base_work)
        deliveries = await count_rows(url, "webhook_deliveries")

        bench_pg = EmbeddedPostgres(REPO / ".fusion-prime" / "bench-pg")
        started_here = not bench_pg.running()
        bench_admin = bench_pg.start()
        try:
            bench_factory = DatabaseFactory(bench_admin)
            console.print(f"end to end: {e2e_events} events through the broker, batched ...")
            e2e_n, e2e_s = await _end_to_end(bench_admin, bench_factory, e2e_events, BATCH)
            console.print(f"end to end: {e2e_baseline_events} events, batch size 1 ...")
            e2e_base_n, e2e_base_s = await _end_to_end(
                bench_admin, bench_factory, e2e_baseline_events, 1
            )
        finally:
            if started_here:
                bench_pg.stop()

        table = Table(title="settlement: chain-event ingestion (2-core machine)")
        for col in ("path", "events", "seconds", "events/s", "target"):
            table.add_column(col, justify="right")
        table.add_row(
            f"handler only: batch handler, {BATCH}/tx",
            str(len(work)),
            f"{batched:.2f}",
            f"{len(work) / batched:,.0f}",
            "",
        )
        table.add_row(
            "handler only: naive, 1 event/tx",
            str(len(base_work)),
            f"{naive:.2f}",
            f"{len(base_work) / naive:,.0f}",
            "",
        )
        table.add_row(
            f"end to end: broker -> tables, batch {BATCH}",
            str(e2e_n),
            f"{e2e_s:.2f}",
            f"{e2e_n / e2e_s:,.0f}",
            ">= 3,000",
        )
        table.add_row(
            "end to end: naive, batch size 1",
            str(e2e_base_n),
            f"{e2e_base_s:.2f}",
            f"{e2e_base_n / e2e_base_s:,.0f}",
            "",
        )
        console.print(table)
        speedup = (len(work) / batched) / (len(base_work) / naive)
        e2e_speedup = (e2e_n / e2e_s) / (e2e_base_n / e2e_base_s)
        console.print(
            "handler only: handle_chain_events called in process, test server (fsync off); "
            "end to end: published on the postgres broker, drained by a consumer process "
            "wired like the service (bus consumer loops + relay), bench-pg server (fsync on)"
        )
        console.print(
            f"speed-up handler only {speedup:.1f}x, end to end {e2e_speedup:.1f}x; also "
            f"written (handler only): {deliveries} webhook deliveries and one outbox row per "
            "state change"
        )

        addresses = await _addresses(url)
        # the endpoint is unreachable: keep the delivery worker from retrying thousands of
        # deliveries while the read latency is measured
        await fetch(url, "UPDATE webhook_endpoints SET enabled = false")
        await fetch(url, "VACUUM ANALYZE")  # steady state, not autovacuum racing the load
        random.shuffle(addresses)
        with tempfile.TemporaryDirectory() as tmp:
            proc = ServiceProcess.for_service(
                "settlement", url, Path(tmp), extra_env={"SETTLEMENT_WEBHOOK_KEY": WEBHOOK_KEY}
            )
            proc.start()
            try:
                proc.wait_ready(60)
                paths = [f"/escrows/{a}" for a in addresses]
                await _load(proc.base_url, paths[:50], rate, 2.0, proc.headers)  # warm-up
                live, live_err = await _load(proc.base_url, ["/health/live"], rate, seconds)
                route = "/escrows/{address}"
                before = await _server_buckets(proc.base_url, route)
                got, got_err = await _load(proc.base_url, paths, rate, seconds, proc.headers)
                after = await _server_buckets(proc.base_url, route)
            finally:
                proc.terminate()
        lat = Table(title=f"settlement: latency at {rate:.0f} requests/s, one worker")
        for col in ("request", "requests", "errors", "p50 ms", "p99 ms", "max ms", "mean ms"):
            lat.add_column(col, justify="right")
        for name, values, errs in (
            ("GET /escrows/{address}", got, got_err),
            ("baseline GET /health/live", live, live_err),
        ):
            lat.add_row(
                name,
                str(len(values) + errs),
                str(errs),
                f"{_pct(values, 0.50):.2f}",
                f"{_pct(values, 0.99):.2f}",
                f"{max(values) * 1000:.2f}",
                f"{statistics.fmean(values) * 1000:.2f}",
            )
        console.print(lat)
        console.print(
            "inside the service (its own histogram, bucket bounds): GET /escrows/{address} "
            f"p50 {_bucket_quantile(before, after, 0.5)} ms, "
            f"p99 {_bucket_quantile(before, after, 0.99)} ms"
        )
        console.print("target: GET /escrows/{address} p99 <= 20 ms")
    finally:
        await factory.drop(url)
        await factory.drop(base_url)


async def _addresses(url: str) -> list[str]:
    return [r["address"] for r in await fetch(url, "SELECT address FROM escrows")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--escrows", type=int, default=5000, help="escrows (4 events each)")
    parser.add_argument("--baseline-escrows", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--e2e-events", type=int, default=20_000, help="end to end, batched")
    parser.add_argument("--e2e-baseline-events", type=int, default=2_000)
    parser.add_argument("--serve-consumer", nargs=2, metavar=("DB_URL", "BUS_URL"))
    parser.add_argument("--batch", type=int, default=BATCH, help="FP_BUS_BATCH_SIZE")
    args = parser.parse_args()
    if args.serve_consumer:
        db_url, bus_url = args.serve_consumer
        asyncio.run(serve_consumer(db_url, bus_url, args.batch))
    else:
        asyncio.run(
            main(
                args.escrows,
                args.baseline_escrows,
                args.rate,
                args.seconds,
                args.e2e_events,
                args.e2e_baseline_events,
            )
        )
