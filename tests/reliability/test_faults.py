"""Faults on the running system, each followed by the scripted exactly-once check.

The services (settlement, risk, alerts) run as real processes consuming a stream of chain
events, price ticks and margin events from the postgres broker. The server that is stopped
is always a private embedded one of the test (tests/reliability/system.py), never the
suite's. Sizes: `sizes()` (fast here; RELIABILITY_SOAK=1 for the long ones).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fusion_prime.platform.bus.postgres import PostgresBroker
from tests.e2e.conftest import cli
from tests.harness import DatabaseFactory, fetch, fetchval
from tests.reliability.system import (
    CaseRow,
    Probe,
    System,
    effects,
    fill,
    make_stream,
    private_server,
    publish,
    record,
    settle,
    sizes,
    small_filesystem,
    system,
    wait_ready,
)

pytestmark = pytest.mark.timeout(900)


def _stream_sizes() -> tuple[int, int, int, float]:
    s = sizes()
    return int(s["chain"]), int(s["ticks"]), int(s["margin"]), s["outage"]


def _all_alive(sys_: System) -> bool:
    return all(p.process is not None and p.process.poll() is None for p in sys_.procs.values())


async def test_service_database_server_stopped_and_restarted_during_the_stream(
    db_factory: DatabaseFactory, log_dir: Path
) -> None:
    """The services' PostgreSQL goes away mid-stream and comes back: the processes stay up,
    readiness is 503 during and 200 after without a restart, nothing is lost or doubled."""
    chain, ticks, margin, outage = _stream_sizes()
    stream = make_stream(chain, ticks, margin)
    with private_server("services-pg") as server:
        own = DatabaseFactory(server.url())
        async with system(own, db_factory, log_dir) as sys_:
            out = stream.outgoing()
            first, rest = out[: len(out) // 3], out[len(out) // 3 :]
            await publish(sys_.bus, first)
            urls = {n: sys_.url(n) for n in sys_.procs}
            stop = asyncio.Event()
            probe = Probe()
            poller = asyncio.create_task(probe.poll(urls, stop))
            await asyncio.to_thread(server.stop, "immediate")
            # the producers keep publishing into the bus (another server) while it is down
            producer = asyncio.create_task(publish(sys_.bus, rest))
            await asyncio.sleep(outage)
            await asyncio.to_thread(server.start)
            restarted = time.monotonic()
            await wait_ready(urls, timeout=120)
            stop.set()
            await poller
            await producer
            got = await settle(sys_, stream, timeout=300)
            recover = time.monotonic() - restarted
            alive = _all_alive(sys_)
    record(
        CaseRow(
            "postgres-restart",
            f"services' PostgreSQL stopped (immediate) for {outage:g} s mid-stream",
            got.events_in,
            got.effects_out,
            got.lost,
            got.duplicated,
            round(recover, 1),
            f"dead letters {got.dead_letters}",
        )
    )
    assert alive, "a service process exited during the outage"
    for name, seen in probe.statuses.items():
        assert 503 in seen, f"{name} never answered 503 while its database was down: {seen}"
        assert seen[-1] == 200, (
            f"{name} did not come back: {seen[-10:]}, last error {probe.last_error.get(name)}"
        )
    assert probe.live_failures == 0
    assert got.dead_letters == 0, repr(got)  # a str: pytest shortens an object
    assert got.exact, repr(got)


async def test_kill_9_of_each_service_in_turn_during_the_stream(
    db_factory: DatabaseFactory, log_dir: Path
) -> None:
    chain, ticks, margin, _ = _stream_sizes()
    stream = make_stream(chain, ticks, margin)
    async with system(db_factory, db_factory, log_dir) as sys_:
        out = stream.outgoing()
        parts = len(sys_.procs) + 1
        step = len(out) // parts + 1
        recovered: dict[str, float] = {}
        for i, (name, proc) in enumerate(sys_.procs.items()):
            producer = asyncio.create_task(publish(sys_.bus, out[i * step : (i + 1) * step]))
            await asyncio.sleep(0.3)  # mid-batch: the consumers are working
            await asyncio.to_thread(proc.kill9)
            started = time.monotonic()
            await producer
            proc.start()
            await wait_ready({name: proc.base_url}, timeout=120)
            recovered[name] = time.monotonic() - started
        await publish(sys_.bus, out[(parts - 1) * step :])
        got = await settle(sys_, stream, timeout=300)
        alive = _all_alive(sys_)
    record(
        CaseRow(
            "kill-9",
            "kill -9 of " + ", ".join(recovered) + " in turn, each restarted",
            got.events_in,
            got.effects_out,
            got.lost,
            got.duplicated,
            round(max(recovered.values()), 1),
            "ready again after: " + ", ".join(f"{n} {s:.1f} s" for n, s in recovered.items()),
        )
    )
    assert alive
    assert got.dead_letters == 0, repr(got)
    assert got.exact, repr(got)


async def test_bus_database_stopped_during_the_stream(
    db_factory: DatabaseFactory, log_dir: Path
) -> None:
    """The bus server goes away: producers retry, the services stay up and ready (their own
    databases are fine), and once it is back everything published is applied once."""
    chain, ticks, margin, outage = _stream_sizes()
    stream = make_stream(chain, ticks, margin)
    with private_server("bus-pg") as server:
        bus_factory = DatabaseFactory(server.url())
        async with system(db_factory, bus_factory, log_dir) as sys_:
            out = stream.outgoing()
            half = len(out) // 2
            await publish(sys_.bus, out[:half])
            urls = {n: sys_.url(n) for n in sys_.procs}
            stop = asyncio.Event()
            probe = Probe()
            poller = asyncio.create_task(probe.poll(urls, stop))
            await asyncio.to_thread(server.stop, "immediate")
            producer = asyncio.create_task(publish(sys_.bus, out[half:]))
            await asyncio.sleep(outage)
            await asyncio.to_thread(server.start)
            restarted = time.monotonic()
            await producer
            got = await settle(sys_, stream, timeout=300)
            recover = time.monotonic() - restarted
            stop.set()
            await poller
            alive = _all_alive(sys_)
    record(
        CaseRow(
            "bus-down",
            f"bus PostgreSQL stopped (immediate) for {outage:g} s mid-stream",
            got.events_in,
            got.effects_out,
            got.lost,
            got.duplicated,
            round(recover, 1),
            f"dead letters {got.dead_letters}",
        )
    )
    assert alive
    assert probe.live_failures == 0
    for name, seen in probe.statuses.items():
        assert set(seen) == {200}, f"{name} readiness depends on the bus: {sorted(set(seen))}"
    assert got.dead_letters == 0, repr(got)
    assert got.exact, repr(got)


FAIL_APPROVALS = """
CREATE FUNCTION reliability_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected: approvals refused'; END $$;
CREATE TRIGGER reliability_refuse BEFORE INSERT ON inbox
FOR EACH ROW WHEN (NEW.event_type = 'escrow.approved') EXECUTE FUNCTION reliability_refuse();
"""
FIX_APPROVALS = "DROP TRIGGER reliability_refuse ON inbox; DROP FUNCTION reliability_refuse();"


async def test_a_consumer_failing_for_one_event_type_dead_letters_it_and_replay_applies_once(
    db_factory: DatabaseFactory, log_dir: Path
) -> None:
    """Settlement's consumer raises for every `escrow.approved` (a trigger in its own
    database refuses them): those are dead-lettered after the bounded attempts, every other
    event and consumer keeps flowing; after the fix a replay applies each exactly once."""
    stream = make_stream(40, 20, 10)
    approvals = [e for e in stream.events["settlement.events.v1"] if e.type == "escrow.approved"]
    async with system(db_factory, db_factory, log_dir) as sys_:
        sdb = sys_.db["settlement"]
        for sql in FAIL_APPROVALS.split(";\n"):
            if sql.strip():
                await fetchval(sdb, sql)
        await publish(sys_.bus, stream.outgoing())

        async def dead_count() -> int:
            return int(
                await fetchval(
                    sys_.bus,
                    "SELECT count(*) FROM bus_dead_letters WHERE subscription = $1",
                    "settlement-events-consumer",
                )
            )

        deadline = time.monotonic() + 120
        while await dead_count() < len(approvals) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        others = ["risk-events-consumer", "risk-engine-prices-consumer"]
        flowing = await settle(sys_, stream, timeout=120, consumers=others)
        before = await effects(sys_, stream, ["settlement-events-consumer"])
        dead = await fetch(sys_.bus, "SELECT id, event_type, error FROM bus_dead_letters")
        assert {d["event_type"] for d in dead} == {"escrow.approved"}
        assert len(dead) == len(approvals)
        assert all("injected: approvals refused" in d["error"] for d in dead)
        assert flowing.exact, flowing  # the other consumers got everything
        assert before.lost == len(approvals)  # only the refused type is missing
        # the fix, then the operator's replay (the command for one, the broker for the rest)
        for sql in FIX_APPROVALS.split(";"):
            if sql.strip():
                await fetchval(sdb, sql)
        started = time.monotonic()
        done = await asyncio.to_thread(
            cli, "events", "replay", str(dead[0]["id"]), bus_url=sys_.bus
        )
        assert done.returncode == 0, done.stdout + done.stderr
        async with PostgresBroker(sys_.bus, pool_size=1) as broker:
            for d in dead[1:]:
                await broker.replay(d["id"], by="reliability test")
        got = await settle(sys_, stream, timeout=120)
        recover = time.monotonic() - started
    record(
        CaseRow(
            "poison-type",
            "settlement consumer raising for every escrow.approved; fixed, then replayed",
            got.events_in,
            got.effects_out,
            got.lost,
            got.duplicated,
            round(recover, 1),
            f"{len(dead)} dead-lettered, replayed; other consumers unaffected",
        )
    )
    assert got.exact, repr(got)


DISK_MB = 256
NO_SPACE = ("No space left on device", "DiskFullError")


async def test_full_disk_on_the_services_data_directory_refuses_clearly_and_recovers(
    db_factory: DatabaseFactory, log_dir: Path
) -> None:
    """The services' PostgreSQL keeps its data directory (and WAL) on a small tmpfs that
    a filler file fills mid-stream: the processes stay up and live, readiness is 503 naming
    the cause (the server's "No space left on device"), no message is dead-lettered (the
    consumers give batches back, attempts not counted), the producers' events wait in the
    bus; once the filler is deleted everything flows without a restart, exactly once."""
    chain, ticks, margin, outage = _stream_sizes()
    stream = make_stream(chain, ticks, margin)
    with (
        small_filesystem("disk", DISK_MB) as mount,
        private_server("full-pg", parent=mount) as server,
    ):
        own = DatabaseFactory(server.url())
        async with system(own, db_factory, log_dir) as sys_:
            out = stream.outgoing()
            first, rest = out[: len(out) // 3], out[len(out) // 3 :]
            await publish(sys_.bus, first)
            urls = {n: sys_.url(n) for n in sys_.procs}
            stop = asyncio.Event()
            probe = Probe()
            filler = await asyncio.to_thread(fill, mount)
            filled_mb = filler.stat().st_size / 2**20
            poller = asyncio.create_task(probe.poll(urls, stop))
            producer = asyncio.create_task(publish(sys_.bus, rest))

            async def refused_everywhere() -> bool:
                return all(any(m in probe.last_error.get(n, "") for m in NO_SPACE) for n in urls)

            deadline = time.monotonic() + 120
            while not await refused_everywhere() and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
            refused = dict(probe.last_error)
            await asyncio.sleep(outage)  # full for a while longer, the stream still coming
            try:  # a new connection needs to write too: the count may be refused as well
                counted = await effects(sys_, stream)
                during = f"{counted.effects_out}/{counted.events_in}"
            except Exception as exc:
                during = f"not countable ({type(exc).__name__}: {exc})"[:120]
            alive_full = _all_alive(sys_)
            filler.unlink()
            freed = time.monotonic()
            await wait_ready(urls, timeout=120)
            stop.set()
            await poller
            await producer
            got = await settle(sys_, stream, timeout=300)
            recover = time.monotonic() - freed
            alive = _all_alive(sys_)
    record(
        CaseRow(
            "disk-full",
            f"services' PostgreSQL data directory (and WAL) on a {DISK_MB} MiB tmpfs, filled "
            f"(filler {filled_mb:.0f} MiB) for {outage:g} s+ mid-stream, then freed",
            got.events_in,
            got.effects_out,
            got.lost,
            got.duplicated,
            round(recover, 1),
            f"applied while full: {during}; readiness 503 "
            f"naming the cause: {sum(any(m in t for m in NO_SPACE) for t in refused.values())}"
            f"/{len(urls)} services; dead letters {got.dead_letters}",
        )
    )
    assert alive_full, "a service process exited on the full disk"
    assert alive, "a service process exited after the full disk"
    assert probe.live_failures == 0
    for name in urls:
        assert any(m in refused.get(name, "") for m in NO_SPACE), (name, refused.get(name))
        seen = probe.statuses[name]
        assert seen[-1] == 200, (name, seen[-10:], probe.last_error.get(name))
    assert got.dead_letters == 0, repr(got)
    assert got.exact, repr(got)
