"""Settlement benchmark: chain-event ingestion and `GET /escrows/{address}` latency.

Run: .venv/bin/python -m bench.settlement [--escrows N] [--rate R] [--seconds S]

1. Ingestion: envelopes as JSON (what a broker hands over) -> Envelope -> the real
   `handle_chain_events` batch handler through `consume_batch`, one transaction per batch,
   into the settlement tables (escrows, approvals, history, chain_events, inbox, outbox,
   webhook deliveries). Baseline in the same run: the same handler, one transaction per
   event (what a naive consumer does).
2. Latency: a real `fusion-prime serve settlement` process (one worker) answering
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
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume, consume_batch
from fusion_prime.platform.database import create_engine, normalise_database_url
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
    base_url: str, paths: Sequence[str], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open loop: request i is due at t0 + i/rate whatever happened to earlier ones."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0, limits=limits) as client:

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


async def main(escrows: int, baseline_escrows: int, rate: float, seconds: float) -> None:
    console = Console()
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

        table = Table(title="settlement: chain-event ingestion (2-core machine)")
        for col in ("path", "events", "seconds", "events/s"):
            table.add_column(col, justify="right")
        table.add_row(
            f"batch handler ({BATCH}/tx)",
            str(len(work)),
            f"{batched:.2f}",
            f"{len(work) / batched:,.0f}",
        )
        table.add_row(
            "naive: 1 event/tx",
            str(len(base_work)),
            f"{naive:.2f}",
            f"{len(base_work) / naive:,.0f}",
        )
        console.print(table)
        speedup = (len(work) / batched) / (len(base_work) / naive)
        console.print(
            f"target >= 3,000 events/s; speed-up {speedup:.1f}x; also written: {deliveries} "
            "webhook deliveries and one outbox row per state change"
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
                await _load(proc.base_url, paths[:50], rate, 2.0)  # warm-up
                live, live_err = await _load(proc.base_url, ["/health/live"], rate, seconds)
                route = "/escrows/{address}"
                before = await _server_buckets(proc.base_url, route)
                got, got_err = await _load(proc.base_url, paths, rate, seconds)
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
    args = parser.parse_args()
    asyncio.run(main(args.escrows, args.baseline_escrows, args.rate, args.seconds))
