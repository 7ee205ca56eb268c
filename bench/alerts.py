"""Alerts benchmark: event consumption, delivery throughput, commit-to-delivery latency.

Run: .venv/bin/python -m bench.alerts [--events N] [--deliveries N] [--rate R] [--seconds S]

On the test harness's PostgreSQL (TEST_DATABASE_URL, or the embedded test server, fsync
off: a throw-away database), in a fresh alerts database dropped afterwards.

1. Consumption: margin events (the risk engine's envelope shape) through the real
   `handle_margin_events` batch handler and `consume_batch` (inbox claim + events +
   notifications in one transaction per batch of 500), for accounts that each have one
   contact with two channels (email, webhook) -> two notifications per event, with
   dedupe and quiet-hour checks. Baseline in the same run: one transaction per event.
2. Deliveries/s: N pending webhook notifications sent by the real `DeliveryWorker`
   (claim with SKIP LOCKED, signed POST, attempt recorded per delivery) to a local HTTP
   receiver in its own process that answers every request after 50 ms. Bounded
   concurrency (ALERTS_DELIVERY_CONCURRENCY=100) vs a one-at-a-time baseline
   (concurrency 1) on fewer notifications, same run, same receiver.
3. Commit-to-delivery latency: events committed at a fixed rate (open loop) while the
   worker runs (woken by NOTIFY); latency = arrival of the webhook at the receiver (its
   clock, same machine) minus the commit of the event's transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.alerts.delivery import Deliverer, DeliveryWorker
from fusion_prime.alerts.handlers import handle_margin_events
from fusion_prime.alerts.settings import AlertsSettings
from fusion_prime.alerts.spec import SPEC
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.embedded import free_port
from fusion_prime.platform.outbound import ClientPool
from fusion_prime.platform.targets import TargetPolicy
from tests.alerts.conftest import SECRET_KEY, SUBSCRIPTION, margin_event
from tests.harness import DatabaseFactory, admin_url_from_env

console = Console(width=150)
BATCH = 500
ANSWER_DELAY = 0.05


# -- the receiver (its own process: python -m bench.alerts --receiver PORT) --------------


def receiver(port: int) -> None:
    """An asyncio HTTP server (aiohttp.web, whose parser is C: uvicorn here would run h11
    in Python and cap the run below the sender): records the first arrival per event id
    and answers 200 after ANSWER_DELAY, many requests at once like a real endpoint."""
    from aiohttp import web

    arrivals: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        at = time.time()
        await request.read()
        arrivals.setdefault(request.headers.get("Fusion-Prime-Event-Id", ""), at)
        await asyncio.sleep(ANSWER_DELAY)
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        body = json.dumps(arrivals)
        if request.path == "/reset":
            arrivals.clear()
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    app.router.add_get("/{tail:.*}", stats)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, backlog=2048, print=None,
                access_log=None)  # fmt: skip


# -- helpers -----------------------------------------------------------------------------


async def _setup_accounts(sessions: async_sessionmaker[AsyncSession], n: int, hook: str) -> None:
    """n accounts, each with one contact (email + webhook) and preferences, in bulk."""
    async with sessions() as s, s.begin():
        await s.execute(
            text(
                "INSERT INTO contacts (id, account_id, name, timezone) SELECT "
                "md5('c' || i)::uuid, 'b-' || i, 'desk', 'Europe/Zurich' "
                "FROM generate_series(0, :n - 1) i"
            ),
            {"n": n},
        )
        await s.execute(
            text(
                "INSERT INTO contact_endpoints (contact_id, channel, position, address) "
                "SELECT md5('c' || i)::uuid, ch.channel, ch.pos, CASE ch.channel WHEN 'email' "
                "THEN 'b' || i || '@example.com' ELSE :hook END FROM generate_series(0, :n - 1) i, "
                "(VALUES ('webhook', 0), ('email', 1)) AS ch(channel, pos)"
            ),
            {"n": n, "hook": hook},
        )
        await s.execute(
            text(
                "INSERT INTO preferences (account_id, kinds, channels, quiet_start, quiet_end, "
                "quiet_bypass) SELECT 'b-' || i, :kinds, :channels, '03:00', '03:01', "
                "'{liquidation}' FROM generate_series(0, :n - 1) i"
            ),
            {
                "n": n,
                "kinds": ["warning", "margin_call", "liquidation", "reminder"],
                "channels": ["webhook", "email"],
            },
        )


def _events(n: int, accounts: int) -> list[Envelope]:
    tiers = ["warning", "margin_call", "liquidation"]
    return [
        margin_event(f"b-{i % accounts}", to_tier=tiers[(i // accounts) % 3], from_tier="healthy")
        for i in range(n)
    ]


async def consume_rate(
    sessions: async_sessionmaker[AsyncSession], events: list[Envelope], batch: int
) -> float:
    raw = [e.to_json() for e in events]
    started = time.perf_counter()
    for i in range(0, len(raw), batch):
        chunk = [Envelope.from_json(r) for r in raw[i : i + batch]]
        async with sessions() as s, s.begin():
            await consume_batch(s, SUBSCRIPTION, chunk, handle_margin_events)
    return len(events) / (time.perf_counter() - started)


async def _pending(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int(
            (
                await s.execute(text("SELECT count(*) FROM notifications WHERE status = 'pending'"))
            ).scalar_one()
        )


async def delivery_rate(
    sessions: async_sessionmaker[AsyncSession], settings: AlertsSettings, hook_events: int
) -> tuple[float, int]:
    """Only webhook notifications pending (email ones are parked): the worker drains them."""
    async with sessions() as s, s.begin():
        await s.execute(
            text(
                "UPDATE notifications SET status = 'suppressed', reason = 'bench: parked', "
                "next_attempt_at = NULL WHERE status = 'pending'"
            )
        )
    # escalations: never folded into what earlier parts of the run opened
    events = [
        margin_event(f"b-{i}", to_tier="liquidation", from_tier="warning")
        for i in range(hook_events)
    ]
    async with sessions() as s, s.begin():
        await consume_batch(s, SUBSCRIPTION, events, handle_margin_events)
        await s.execute(
            text(
                "UPDATE notifications SET status = 'suppressed', next_attempt_at = NULL "
                "WHERE status = 'pending' AND channel <> 'webhook'"
            )
        )
    n = await _pending(sessions)
    worker = DeliveryWorker(sessions, settings)
    policy = TargetPolicy.from_settings(settings)  # as the service: a checking resolver
    async with ClientPool(settings.delivery_concurrency, 10, policy=policy) as clients:
        worker.deliverer = Deliverer(sessions, settings, clients)
        started = time.perf_counter()
        while await worker.run_once():
            pass
        elapsed = time.perf_counter() - started
    return n / elapsed, n


async def latency(
    sessions: async_sessionmaker[AsyncSession],
    settings: AlertsSettings,
    url: Any,
    receiver_url: str,
    rate: float,
    seconds: float,
    accounts: int,
) -> list[float]:
    async with sessions() as s, s.begin():
        await s.execute(
            text(
                "UPDATE notifications SET status = 'suppressed', next_attempt_at = NULL "
                "WHERE status = 'pending'"
            )
        )
        # only the webhook channel for this part (the email would need an SMTP server)
        await s.execute(text("UPDATE preferences SET channels = '{webhook}'"))
    httpx.get(f"{receiver_url}/reset")
    worker = DeliveryWorker(sessions, settings, url)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(1.0)  # LISTEN connection up
    committed: dict[str, float] = {}
    n = int(rate * seconds)
    start = time.perf_counter()
    events = [
        margin_event(f"b-{i % accounts}", to_tier="liquidation", from_tier="margin_call")
        for i in range(n)
    ]
    for i, e in enumerate(events):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sessions() as s, s.begin():
            await consume_batch(s, SUBSCRIPTION, [e], handle_margin_events)
        committed[str(e.id)] = time.time()
    deadline = time.monotonic() + 30
    arrivals: dict[str, float] = {}
    while time.monotonic() < deadline:
        arrivals = httpx.get(f"{receiver_url}/stats").json()
        if all(k in arrivals for k in committed):
            break
        await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return [arrivals[k] - t for k, t in committed.items() if k in arrivals]


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


async def main(events: int, deliveries: int, rate: float, seconds: float) -> None:
    admin, _server = admin_url_from_env()
    factory = DatabaseFactory(admin)
    url = await factory.create("alerts_bench", SPEC.migrations_dir)
    port = free_port()
    recv = subprocess.Popen(
        [sys.executable, "-m", "bench.alerts", "--receiver", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert recv.stdout is not None
    recv.stdout.readline()
    receiver_url = f"http://127.0.0.1:{port}"
    db_url = normalise_database_url(url, service="alerts")
    engine = create_engine(db_url, pool_size=20, app_name="alerts-bench")
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    # the receiver is on loopback: allowed as in tests, through the service's target policy
    base = {"DATABASE_URL": url, "ALERTS_SECRET_KEY": SECRET_KEY, "FP_ENV": "test",
            "ALERTS_LEASE_SECONDS": "300", "FP_OUTBOUND_ALLOW_PRIVATE": "true"}  # fmt: skip
    try:
        accounts = max(deliveries, 2000)
        await _setup_accounts(sessions, accounts, f"{receiver_url}/hook")
        console.print(f"consuming {events} events in batches of {BATCH} ...")
        batched = await consume_rate(sessions, _events(events, accounts), BATCH)
        one = await consume_rate(sessions, _events(500, accounts), 1)
        fast = AlertsSettings(**base, ALERTS_DELIVERY_CONCURRENCY="100",  # type: ignore[arg-type]
                              ALERTS_DELIVERY_BATCH="500")  # fmt: skip
        slow = AlertsSettings(**base, ALERTS_DELIVERY_CONCURRENCY="1",  # type: ignore[arg-type]
                              ALERTS_DELIVERY_BATCH="1")  # fmt: skip
        console.print(f"delivering {deliveries} webhooks (concurrency 100) ...")
        d_fast, n_fast = await delivery_rate(sessions, fast, deliveries)
        console.print("baseline: one at a time ...")
        d_slow, n_slow = await delivery_rate(sessions, slow, 60)
        console.print(f"latency at {rate:.0f} events/s for {seconds:.0f} s ...")
        lat = await latency(sessions, fast, db_url, receiver_url, rate, seconds, accounts)

        t = Table(title="alerts (2-core machine, shared)")
        t.add_column("measure")
        t.add_column("result", justify="right")
        t.add_column("baseline (same run)", justify="right")
        t.add_column("ratio", justify="right")
        t.add_column("target")
        t.add_row(
            "events consumed -> notifications stored (2 per event)",
            f"{batched:,.0f} events/s",
            f"{one:,.0f} events/s (1 tx/event)",
            f"{batched / one:.1f}x",
            ">= 5,000 events/s",
        )
        t.add_row(
            f"webhook deliveries, receiver answers in {ANSWER_DELAY * 1000:.0f} ms",
            f"{d_fast:,.0f}/s ({n_fast})",
            f"{d_slow:,.1f}/s ({n_slow}, one at a time)",
            f"{d_fast / d_slow:.0f}x",
            ">= 1,000/s",
        )
        expected = int(rate * seconds)
        t.add_row(
            f"commit -> delivery at {rate:.0f} events/s",
            f"p50 {_pct(lat, 0.5) * 1000:.0f} ms, p99 {_pct(lat, 0.99) * 1000:.0f} ms"
            if lat
            else "nothing arrived",
            f"max {max(lat) * 1000:.0f} ms, mean {statistics.mean(lat) * 1000:.0f} ms"
            if lat
            else "-",
            f"{len(lat)}/{expected} arrived",
            "p99 <= 1 s, all arrive",
        )
        console.print(t)
    finally:
        recv.terminate()
        await engine.dispose()
        await factory.drop(url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--deliveries", type=int, default=3_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--receiver", type=int, default=0)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.receiver)
    else:
        import logging

        logging.disable(logging.INFO)
        asyncio.run(main(args.events, args.deliveries, args.rate, args.seconds))
