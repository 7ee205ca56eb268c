"""The local system under faults: real processes, a PostgreSQL server the test may stop, an
event stream, and the scripted check that every effect exists exactly once.

Shared by the fast cases (tests/reliability, in `make test`) and the long ones
(`make soak`, bench/soak.py): only the sizes differ. Each case records one row for
`make reliability-report` (what was injected, events in, effects out, lost, duplicated,
time to recover) into RELIABILITY_RESULTS when that is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from fusion_prime.platform.embedded import EmbeddedPostgres
from fusion_prime.services import load_spec
from tests.alerts.conftest import margin_event
from tests.e2e.conftest import BUS_ENV, prepare_bus
from tests.harness import (
    BUS_MIGRATIONS_DIR,
    REPO_ROOT,
    DatabaseFactory,
    ServiceProcess,
    fetch,
    fetchval,
)
from tests.reliability.contract import SERVICE_SECRETS
from tests.settlement.factory import Escrow

CHAIN = "settlement.events.v1"
PRICES = "market.prices.v1"
MARGIN = "alerts.margin.v1"
# consumer -> (topic, owning service)
CONSUMERS = {
    "settlement-events-consumer": (CHAIN, "settlement"),
    "risk-events-consumer": (CHAIN, "risk"),
    "risk-engine-prices-consumer": (PRICES, "risk"),
    "alert-notification-service": (MARGIN, "alerts"),
}
STREAM_SERVICES = ("settlement", "risk", "alerts")
# Durable (the defaults): these servers are crashed on purpose (`pg_ctl -m immediate`), and
# with fsync/synchronous_commit off a crash loses commits the clients were told about.
SERVER_SETTINGS: dict[str, str] = {}
FAST_BUS_ENV = {**BUS_ENV, "FP_BUS_RETRY_MAX": "2"}


# -- the stream ---------------------------------------------------------------------


@dataclass
class Stream:
    """Events per topic, and what each must leave behind."""

    events: dict[str, list[Envelope]]
    escrows: list[Escrow]
    accounts: list[str]

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.events.values())

    def outgoing(self) -> list[OutgoingEvent]:
        """Interleaved across topics, as independent producers would deliver them."""
        queues = {t: list(v) for t, v in self.events.items()}
        out: list[OutgoingEvent] = []
        while any(queues.values()):
            for topic, q in queues.items():
                if q:
                    e = q.pop(0)
                    out.append(OutgoingEvent(e.id, topic, e.subject, e.type, e.to_json()))
        return out


def make_stream(chain: int, ticks: int, margin: int) -> Stream:
    """`chain` chain events (an escrow's deployment then one approval), `ticks` price ticks
    (ETH and USDC alternately, each newer than the last), `margin` margin events."""
    escrows = [Escrow() for _ in range((chain + 1) // 2)]
    chain_events: list[Envelope] = []
    for e in escrows:
        chain_events.append(e.deployed(required=2, amount=1_000_000))
        chain_events.append(e.approved(e.payer))
    chain_events = chain_events[:chain]
    start = datetime.now(UTC) - timedelta(hours=1)
    price_events = [
        Envelope(
            type="price.updated",
            source="oracle",
            subject=asset,
            data={
                "asset": asset,
                "price": str(3000 + i % 100) if asset == "ETH" else "1",
                "source": "reliability",
                "source_time": (start + timedelta(milliseconds=i)).isoformat(),
            },
        )
        for i in range(ticks)
        for asset in ["ETH" if i % 2 == 0 else "USDC"]
    ]
    accounts = [f"rel-{i % 50}" for i in range(margin)]
    margin_events = [_margin_event(a, i) for i, a in enumerate(accounts)]
    return Stream(
        {CHAIN: chain_events, PRICES: price_events, MARGIN: margin_events}, escrows, accounts
    )


def _margin_event(account: str, i: int) -> Envelope:
    """An alerts.margin.v1 envelope shaped like the risk engine's, tiers cycling."""
    tiers = ("healthy", "warning", "margin_call")
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    return margin_event(
        account, from_tier=tiers[i % 3], to_tier=tiers[(i + 1) % 3], evaluated_at=at.isoformat()
    )


async def publish(
    bus_url: str, events: Sequence[OutgoingEvent], *, batch: int = 50, pause: float = 0.0
) -> int:
    """Publish like an upstream producer: in batches, retrying a batch the broker refused
    (the bus server may be the one stopped); re-sending the same ids is safe."""
    sent = 0
    broker: PostgresBroker | None = None
    try:
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            while True:
                try:
                    if broker is None:
                        broker = await PostgresBroker(bus_url, pool_size=1).start()
                    await broker.publish(chunk)
                    break
                except (OSError, Exception):
                    if broker is not None:
                        with contextlib.suppress(Exception):
                            await broker.close()
                        broker = None
                    await asyncio.sleep(0.2)
            sent += len(chunk)
            if pause:
                await asyncio.sleep(pause)
    finally:
        if broker is not None:
            await broker.close()
    return sent


# -- the system ----------------------------------------------------------------------


@dataclass
class System:
    """Services as real processes; their databases and the bus on given servers."""

    bus: str
    db: dict[str, str]
    procs: dict[str, ServiceProcess]
    log_dir: Path

    def url(self, service: str) -> str:
        return self.procs[service].base_url

    def start(self, names: Sequence[str] | None = None, timeout: float = 120) -> None:
        chosen = [self.procs[n] for n in (names or self.procs)]
        for p in chosen:
            p.start()
        for p in chosen:
            p.wait_ready(timeout)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()


@contextlib.asynccontextmanager
async def system(
    services_factory: DatabaseFactory,
    bus_factory: DatabaseFactory,
    log_dir: Path,
    services: Sequence[str] = STREAM_SERVICES,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[System]:
    """Databases of `services` from one factory (server), the bus from another (may be the
    same server); the processes started and stopped; the databases dropped afterwards."""
    bus = await bus_factory.create("bus", BUS_MIGRATIONS_DIR)
    dbs = {s: await services_factory.create(s, load_spec(s).migrations_dir) for s in services}
    sys_: System | None = None
    try:
        await prepare_bus(bus)
        env = {"FP_BUS_URL": bus, **FAST_BUS_ENV, **(extra_env or {})}
        procs = {
            s: ServiceProcess.for_service(
                s, url, log_dir, extra_env={**SERVICE_SECRETS.get(s, {}), **env}
            )
            for s, url in dbs.items()
        }
        sys_ = System(bus, dbs, procs, log_dir)
        await asyncio.to_thread(sys_.start)
        yield sys_
    finally:
        if sys_ is not None:
            sys_.stop()
        with contextlib.suppress(Exception):
            await bus_factory.drop(bus)
        for url in dbs.values():
            with contextlib.suppress(Exception):
                await services_factory.drop(url)


@contextlib.contextmanager
def private_server(name: str, parent: Path | None = None) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test alone, so it may be stopped (never the suite's).

    Its files live under the project data directory (or `parent`), not pytest's shared
    /tmp folder (other sessions on the machine prune that one)."""
    base = parent or REPO_ROOT / ".fusion-prime" / "reliability"
    data_dir = base / f"{name}-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir, settings=SERVER_SETTINGS)
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def small_filesystem(name: str, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted for this test under the project data directory
    (needs root: CI runs as root; elsewhere the case is skipped, saying why)."""
    import pytest

    path = REPO_ROOT / ".fusion-prime" / "reliability" / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(
            "a full disk needs a small filesystem of its own: mounting a tmpfs is not "
            f"permitted here ({(done.stderr or done.stdout).strip()[-200:]})"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Write a filler file into `directory` until its filesystem has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


# -- the check ------------------------------------------------------------------------


@dataclass
class Effects:
    """What the owning databases hold for a stream, counted per consumer."""

    events_in: int
    effects_out: int
    lost: int
    duplicated: int
    dead_letters: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.effects_out == self.events_in


async def effects(sys_: System, stream: Stream, consumers: Sequence[str] | None = None) -> Effects:
    """Every event of the stream applied exactly once by each consumer of its topic, read
    from the consumers' own databases (inbox, and the domain rows a second apply would
    change), plus what the bus dead-lettered."""
    events_in = effects_out = lost = duplicated = 0
    detail: dict[str, Any] = {}
    for sub, (topic, service) in CONSUMERS.items():
        if service not in sys_.db or (consumers is not None and sub not in consumers):
            continue
        ids = {e.id for e in stream.events[topic]}
        if not ids:
            continue
        rows = await fetch(
            sys_.db[service],
            "SELECT event_id, count(*) AS n FROM inbox WHERE subscription = $1 GROUP BY 1",
            sub,
        )
        seen = {r["event_id"]: r["n"] for r in rows}
        applied = ids & set(seen)
        events_in += len(ids)
        effects_out += len(applied)
        lost += len(ids - applied)
        duplicated += sum(n - 1 for n in seen.values() if n > 1)
        detail[sub] = {"in": len(ids), "applied": len(applied)}
    # domain rows: a second apply of an approval would count it twice, a lost one not at all
    if "settlement" in sys_.db and (consumers is None or "settlement-events-consumer" in consumers):
        expected = _expected_approvals(stream)
        rows = await fetch(sys_.db["settlement"], "SELECT address, approvals_count FROM escrows")
        got = {r["address"]: r["approvals_count"] for r in rows}
        extra = sum(max(0, got.get(a, 0) - n) for a, n in expected.items())
        missing = sum(max(0, n - got.get(a, 0)) for a, n in expected.items())
        duplicated += extra + max(0, len(got) - len(expected))
        detail["settlement.escrows"] = {"expected": len(expected), "rows": len(got)}
        lost += missing if not lost else 0  # counted once: the inbox already shows it
    if "alerts" in sys_.db and (consumers is None or "alert-notification-service" in consumers):
        ids = [e.id for e in stream.events[MARGIN]]
        if ids:
            n = await fetchval(
                sys_.db["alerts"], "SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids
            )
            detail["alerts.events"] = {"expected": len(ids), "rows": n}
            lost = max(lost, len(ids) - int(n))
    dead = int(await fetchval(sys_.bus, "SELECT count(*) FROM bus_dead_letters"))
    return Effects(events_in, effects_out, lost, duplicated, dead, detail)


def _expected_approvals(stream: Stream) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in stream.events[CHAIN]:
        address = e.data["escrow"]
        out.setdefault(address, 0)
        if e.type == "escrow.approved":
            out[address] += 1
    return out


async def settle(
    sys_: System, stream: Stream, timeout: float, consumers: Sequence[str] | None = None
) -> Effects:
    """Wait (bounded) until every event is applied; return the count either way."""
    deadline = time.monotonic() + timeout
    while True:
        got = await effects(sys_, stream, consumers)
        if got.effects_out >= got.events_in or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.25)


# -- probing a service during a fault -------------------------------------------------


@dataclass
class Probe:
    """Readiness and liveness answers of services, polled while a fault is on.

    It takes one more round after `stop` is set, so the last answer recorded per service
    is one given after whatever the test waited for (never a sample from just before)."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    live_failures: int = 0

    async def poll(self, urls: dict[str, str], stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                last_round = stop.is_set()
                for name, base in urls.items():
                    await self._probe(http, name, base)
                if last_round:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)

    async def _probe(self, http: httpx.AsyncClient, name: str, base: str) -> None:
        try:
            r = await http.get(f"{base}/health/ready")
            self.statuses.setdefault(name, []).append(r.status_code)
            if r.status_code != 200:
                self.last_error[name] = r.text[:2000]
            if (await http.get(f"{base}/health/live")).status_code != 200:
                self.live_failures += 1
        except httpx.HTTPError as exc:
            self.statuses.setdefault(name, []).append(0)
            self.last_error[name] = f"{type(exc).__name__}: {exc}"
            self.live_failures += 1


async def wait_ready(urls: dict[str, str], timeout: float) -> float:
    """Seconds until every service answers /health/ready 200 (bounded)."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as http:
        pending = dict(urls)
        while pending:
            for name, base in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{base}/health/ready")).status_code == 200:
                        del pending[name]
            if not pending:
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not ready again within {timeout} s: {sorted(pending)}")
            await asyncio.sleep(0.2)
    return time.monotonic() - started


# -- the report rows ------------------------------------------------------------------


@dataclass
class CaseRow:
    case: str
    injected: str
    events_in: int
    effects_out: int
    lost: int
    duplicated: int
    recover_seconds: float | None
    note: str = ""


def record(row: CaseRow) -> None:
    """Append the row for `make reliability-report` (only when RELIABILITY_RESULTS is set)."""
    path = os.environ.get("RELIABILITY_RESULTS")
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(row)) + "\n")


def sizes() -> dict[str, float]:
    """Fast case sizes by default; RELIABILITY_SOAK=1 gives the long ones (`make soak`)."""
    if os.environ.get("RELIABILITY_SOAK") == "1":
        return {
            "chain": 10_000,
            "ticks": 10_000,
            "margin": 10_000,
            "outage": 30.0,
            "csv_rows": 1_000_000,
        }
    return {"chain": 200, "ticks": 200, "margin": 100, "outage": 3.0, "csv_rows": 100_000}
