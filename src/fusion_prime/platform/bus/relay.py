"""The outbox relay: committed outbox rows of one service database -> the broker.

Order and crash safety: one relay per service database works at a time (a transaction
advisory lock, so several replicas of a service are safe), it takes the oldest
unpublished rows in `seq` order, hands them to the broker and marks them published in
the same service-database transaction only after the broker accepted them. A crash
between the broker's commit and ours re-sends the rows with the same envelope ids: the
postgres broker ignores ids it still holds and every inbox ignores ids it has processed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.outbox import OUTBOX_CHANNEL
from fusion_prime.platform.bus.postgres import Listener, OutgoingEvent, PostgresBroker
from fusion_prime.platform.observability import get_logger

log = get_logger(__name__)

RELAYED = Counter("fp_bus_relayed_total", "Outbox rows handed to the broker", ["service"])
RELAY_ERRORS = Counter("fp_bus_relay_errors_total", "Failed relay batches", ["service"])

_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('fp_outbox_relay'))")
_PENDING = text(
    "SELECT seq, id, topic, subject, event_type, CAST(envelope AS text) AS envelope "
    "FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT :n FOR UPDATE"
)
_MARK = text("UPDATE outbox SET published_at = now() WHERE seq = ANY(:seqs)")
_FAILED = text(
    "UPDATE outbox SET attempts = attempts + 1, last_error = :err WHERE seq = ANY(:seqs)"
)


class Publisher(Protocol):
    """A broker's publishing side. Returns the ids it durably accepted."""

    async def publish(self, events: Sequence[OutgoingEvent]) -> set[uuid.UUID]: ...


class PostgresPublisher:
    """All-or-nothing: the whole batch is one bus-database transaction."""

    def __init__(self, broker: PostgresBroker) -> None:
        self.broker = broker

    async def publish(self, events: Sequence[OutgoingEvent]) -> set[uuid.UUID]:
        await self.broker.publish(events)
        return {e.event_id for e in events}


class Relay:
    def __init__(
        self,
        service: str,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.service = service
        self.engine = engine
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._wake = asyncio.Event()
        self._failures = 0

    async def run_once(self) -> int:
        """Relay at most one batch; returns how many rows were marked published."""
        async with self.engine.connect() as conn, conn.begin():
            if not (await conn.execute(_LOCK)).scalar():
                return 0  # another relay of this database is working
            rows = (await conn.execute(_PENDING, {"n": self.batch_size})).all()
            if not rows:
                return 0
            events = [
                OutgoingEvent(r.id, r.topic, r.subject, r.event_type, r.envelope) for r in rows
            ]
            try:
                accepted = await self.publisher.publish(events)
            except Exception as exc:
                accepted = set()
                error = f"{type(exc).__name__}: {exc}"[:2000]
            else:
                error = "not accepted by the broker"
            # losing this mark in a server crash only re-sends (same ids): no flush wait
            await conn.execute(text("SET LOCAL synchronous_commit = off"))
            done = [r.seq for r in rows if r.id in accepted]
            failed = [r.seq for r in rows if r.id not in accepted]
            if done:
                await conn.execute(_MARK, {"seqs": done})
            if failed:
                await conn.execute(_FAILED, {"seqs": failed, "err": error})
        RELAYED.labels(self.service).inc(len(done))
        if failed:
            RELAY_ERRORS.labels(self.service).inc()
            raise RelayError(f"{len(failed)} outbox rows not accepted: {error}")
        return len(done)

    async def run(self) -> None:
        """Relay forever: woken by NOTIFY on the service database, polling as a fallback."""
        listener = Listener(asyncpg_dsn(self.engine.url), OUTBOX_CHANNEL, self._on_notify)
        try:
            while True:
                await listener.ensure()
                self._wake.clear()
                try:
                    n = await self.run_once()
                    self._failures = 0
                except RelayError as exc:
                    self._failures += 1
                    delay = min(self.retry_base * 2 ** (self._failures - 1), self.retry_max)
                    log.warning("relay batch failed; retrying", error=str(exc), delay=delay)
                    await asyncio.sleep(delay)
                    continue
                if n >= self.batch_size:
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
                except TimeoutError:
                    pass
        finally:
            await listener.close()

    def _on_notify(self, payload: str) -> None:
        self._wake.set()


class RelayError(Exception):
    pass
