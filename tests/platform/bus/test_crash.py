"""kill -9 a consuming process three times in the middle of a 10,000-event stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import MakeDatabase
from tests.harness import ServiceProcess, count_rows, fetch, fetchval
from tests.platform.bus.consumerapp import MIGRATIONS, SUBSCRIPTION, TOPIC
from tests.platform.bus.helpers import broker, insert_outbox, make_events

TOTAL = 10_000
CHUNK = 500


async def test_kill9_three_times_mid_stream_applies_every_effect_exactly_once(
    make_database: MakeDatabase, bus_url: str, log_dir: Path
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    async with broker(bus_url) as b:
        await b.ensure_subscription(TOPIC, SUBSCRIPTION, 5)
    events = make_events(TOTAL, subjects=200)
    proc = ServiceProcess.for_module(
        "tests.platform.bus.consumerapp",
        db_url,
        log_dir,
        extra_env={
            "FP_BUS_URL": bus_url,
            "FP_BUS_VISIBILITY_TIMEOUT": "2",
            "FP_BUS_POLL_INTERVAL": "0.2",
            "FP_BUS_BATCH_SIZE": "200",
        },
    )
    proc.start()
    kills: list[int] = []

    async def feed() -> None:
        # a steady stream into the outbox, independent of the kills
        for i in range(0, TOTAL, CHUNK):
            await insert_outbox(db_url, events[i : i + CHUNK])
            await asyncio.sleep(0.05)

    try:
        await asyncio.to_thread(proc.wait_ready, 60)
        feeder = asyncio.create_task(feed())
        for threshold in (1_550, 4_130, 6_710):
            deadline = time.monotonic() + 90
            # past the threshold and with a batch leased (in flight) right now
            while await count_rows(db_url, "effects") < threshold or not await count_rows(
                bus_url, "bus_messages", "lease_until > now()"
            ):
                assert time.monotonic() < deadline, proc.log_text()[-3000:]
                await asyncio.sleep(0.005)
            proc.kill9()  # mid-stream: leases, relay batches and transactions in flight
            kills.append(await count_rows(db_url, "effects"))
            proc.start()
            await asyncio.to_thread(proc.wait_ready, 60)
        await feeder
        deadline = time.monotonic() + 120
        while await count_rows(db_url, "effects") < TOTAL or await count_rows(
            bus_url, "bus_messages", "acked_at IS NULL"
        ):
            assert time.monotonic() < deadline, proc.log_text()[-3000:]
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything still in flight would show up as an extra row
    finally:
        proc.terminate()
    assert len(kills) == 3
    assert all(k < TOTAL for k in kills), kills  # each kill happened mid-stream
    assert await count_rows(db_url, "effects") == TOTAL
    assert await fetchval(db_url, "SELECT count(DISTINCT event_id) FROM effects") == TOTAL
    assert await count_rows(db_url, "inbox") == TOTAL
    assert await count_rows(db_url, "outbox", "published_at IS NULL") == 0
    assert await count_rows(bus_url, "bus_dead_letters") == 0
    redelivered = await count_rows(bus_url, "bus_messages", "attempts > 1")
    print(f"kills at {kills} effects; {redelivered} messages delivered more than once")
    assert redelivered > 0  # leases held by the killed process expired and were redelivered
    # per subject, effects were first applied in publish order despite the kills
    rows = await fetch(db_url, "SELECT subject, n FROM effects ORDER BY id")
    last: dict[str, int] = {}
    for r in rows:
        assert r["n"] == last.get(r["subject"], 0) + 1, r
        last[r["subject"]] = r["n"]
    expected = {e.id for e in events}
    got = set(await _ids(db_url))
    assert got == expected


async def _ids(db_url: str) -> list[object]:
    return [r["event_id"] for r in await fetch(db_url, "SELECT event_id FROM effects")]
