"""kill -9 the settlement process in the middle of a chain-event stream from the broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import asyncpg

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.envelope import Envelope
from tests.conftest import MakeDatabase
from tests.e2e.conftest import (
    BUS_ENV,
    ESCROWS_OBSERVER,
    SERVICE_ENV,
    drained,
    prepare_bus,
    publish_file,
    write_jsonl,
)
from tests.harness import ServiceProcess, count_rows, fetch, fetchval
from tests.settlement.factory import SPEC, Escrow, wait_for

ESCROWS = 800  # every 4th refunded: 600 x 4 + 200 x 3 = 3,000 chain events
SUBSCRIPTION = "settlement-events-consumer"


def lifecycle(i: int) -> tuple[Escrow, list[Envelope], list[Envelope]]:
    """(escrow, its first two events, the rest); every 4th escrow is refunded."""
    e = Escrow()
    head = [e.deployed(required=2, amount=1_000 + i), e.approved(e.payer)]
    tail = [e.refunded()] if i % 4 == 0 else [e.approved(e.payee), e.released()]
    return e, head, tail


async def test_kill9_mid_stream_then_restart_settles_every_escrow_once(
    make_database: MakeDatabase, bus_url: str, log_dir: Path, tmp_path: Path
) -> None:
    db = await make_database("settlement", SPEC.migrations_dir)
    await prepare_bus(bus_url, ("settlement.escrows.v1", ESCROWS_OBSERVER))
    plan = [lifecycle(i) for i in range(ESCROWS)]
    first = [ev for _, head, _ in plan for ev in head]
    second = [ev for _, _, tail in plan for ev in tail]
    total = len(first) + len(second)
    proc = ServiceProcess.for_service(
        "settlement",
        db,
        log_dir,
        extra_env={"FP_BUS_URL": bus_url, **BUS_ENV, **SERVICE_ENV, "FP_BUS_BATCH_SIZE": "50"},
    )
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready, 90)
        await publish_file(
            bus_url, "settlement.events.v1", write_jsonl(tmp_path / "1.jsonl", first)
        )
        # wait until part of the stream is applied and a batch is leased right now
        sconn = await asyncpg.connect(asyncpg_dsn(db))
        bconn = await asyncpg.connect(asyncpg_dsn(bus_url))
        try:
            deadline = time.monotonic() + 60
            assert proc.process is not None
            while True:
                assert time.monotonic() < deadline, proc.log_text()[-3000:]
                # from the first committed batch on (consumers grow their batches through
                # a backlog, so the stream goes fast: waiting for more left no lease to catch)
                if await sconn.fetchval("SELECT count(*) FROM escrow_history") < 50:
                    await asyncio.sleep(0.002)
                    continue
                # freeze the process, then look: a lease seen now cannot be acked before
                # the kill (checking a running process raced with its commit + ack)
                os.killpg(proc.process.pid, signal.SIGSTOP)
                if await bconn.fetchval(
                    "SELECT count(*) FROM bus_messages WHERE subscription = $1 "
                    "AND acked_at IS NULL AND lease_until > now()",
                    SUBSCRIPTION,
                ):
                    break
                os.killpg(proc.process.pid, signal.SIGCONT)
                await asyncio.sleep(0.002)
            proc.kill9()
            at_kill = await sconn.fetchval("SELECT count(*) FROM escrow_history")
        finally:
            await sconn.close()
            await bconn.close()
        assert proc.process is not None
        assert proc.process.returncode == -9
        assert at_kill < len(first), "the kill came after the stream was consumed"
        # the chain keeps going while settlement is down: the broker holds the events
        await publish_file(
            bus_url, "settlement.events.v1", write_jsonl(tmp_path / "2.jsonl", second)
        )
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 90)
        await wait_for(lambda: drained(bus_url, SUBSCRIPTION), timeout=90)

        async def relayed() -> bool:
            return not await count_rows(db, "outbox", "published_at IS NULL")

        await wait_for(relayed, timeout=30)
        await asyncio.sleep(0.3)  # anything still in flight would show up as an extra row
    finally:
        proc.terminate()

    assert await count_rows(bus_url, "bus_messages", "subscription = $1", SUBSCRIPTION) == total
    redelivered = await count_rows(bus_url, "bus_messages", "attempts > 1")
    print(f"killed at {at_kill}/{len(first)} history rows; {redelivered} redelivered")
    assert redelivered > 0  # the killed process's leases expired and were delivered again
    assert await count_rows(bus_url, "bus_dead_letters") == 0
    assert await count_rows(db, "inbox", "subscription = $1", SUBSCRIPTION) == total
    assert await count_rows(db, "chain_events") == total
    assert await count_rows(db, "escrow_anomalies") == 0
    assert await count_rows(db, "parked_events") == 0

    states = {
        r["address"]: (r["status"], r["approvals_count"])
        for r in await fetch(db, "SELECT address, status, approvals_count FROM escrows")
    }
    expected = {
        e.address: ("refunded", 1) if i % 4 == 0 else ("released", 2)
        for i, (e, _, _) in enumerate(plan)
    }
    assert states == expected
    # history: exactly one row per applied event, in lifecycle order per escrow
    assert await count_rows(db, "escrow_history") == total
    assert await fetchval(db, "SELECT count(DISTINCT chain_event_id) FROM escrow_history") == total
    rows = await fetch(
        db, "SELECT escrow_address, event_type, to_status FROM escrow_history ORDER BY id"
    )
    history: dict[str, list[str]] = {}
    for r in rows:
        history.setdefault(r["escrow_address"], []).append(f"{r['event_type']}>{r['to_status']}")
    refunded = ["escrow.deployed>created", "escrow.approved>created", "escrow.refunded>refunded"]
    released = [
        "escrow.deployed>created",
        "escrow.approved>created",
        "escrow.approved>approved",
        "escrow.released>released",
    ]
    for i, (e, _, _) in enumerate(plan):
        assert history[e.address] == (refunded if i % 4 == 0 else released), e.address

    # each state change reached the broker once (outbox ids = bus event ids, no extra)
    changes = ESCROWS // 4 * 2 + (ESCROWS - ESCROWS // 4) * 3
    assert await count_rows(db, "outbox") == changes
    bus_rows = await fetch(
        bus_url, "SELECT event_id, envelope FROM bus_messages WHERE subscription = $1",
        ESCROWS_OBSERVER,
    )  # fmt: skip
    assert len(bus_rows) == changes
    outbox_ids = {r["id"] for r in await fetch(db, "SELECT id FROM outbox")}
    assert {r["event_id"] for r in bus_rows} == outbox_ids
    final = [json.loads(r["envelope"])["data"]["to_status"] for r in bus_rows]
    assert final.count("released") == ESCROWS - ESCROWS // 4
    assert final.count("refunded") == ESCROWS // 4
