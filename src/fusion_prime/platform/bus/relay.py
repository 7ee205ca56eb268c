"""The outbox relay: committed outbox rows of one service database -> the broker.

Order and crash safety: one relay per service database works at a time (a transaction
advisory lock, so several replicas of a service are safe), it takes the oldest
unpublished rows in `seq` order, hands them to the broker and marks them published in
the same service-database transaction only after the broker accepted them. A crash
between the broker's commit and ours re-sends the rows with the same envelope ids: the
postgres broker ignores ids it still holds and every inbox ignores ids it has processed.

Dead letters: a row the broker *refuses* (the event itself is unacceptable: a PostgreSQL
data/integrity/limit error, Pub/Sub INVALID_ARGUMENT) counts an attempt; after
`max_attempts` refusals it is dead-lettered: it stays in the outbox, unpublished, with its
error, and is no longer relayed, so the rows behind it (its own subject's too) flow on.
Only the oldest unaccepted row of a subject is charged (the later ones were held back for
order, not refused). Transient failures (broker unreachable) never count: they are
retried with back-off forever, so an outage cannot dead-letter anything.
`fusion-prime events outbox` lists dead-lettered rows and `--replay SEQ` re-queues one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
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
OUTBOX_DEAD_LETTERS = Counter(
    "fp_bus_outbox_dead_letters_total",
    "Outbox rows dead-lettered after the broker refused them max-attempts times",
    ["service"],
)

_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('fp_outbox_relay'))")
_PENDING = text(
    "SELECT seq, id, topic, subject, event_type, CAST(envelope AS text) AS envelope "
    "FROM outbox WHERE published_at IS NULL AND attempts < :max "
    "ORDER BY seq LIMIT :n FOR UPDATE"
)
_MARK = text("UPDATE outbox SET published_at = now() WHERE seq = ANY(:seqs)")
_REFUSED = text(
    "UPDATE outbox SET attempts = attempts + 1, last_error = :err WHERE seq = ANY(:seqs) "
    "RETURNING seq, id, attempts"
)
_FAILED = text("UPDATE outbox SET last_error = :err WHERE seq = ANY(:seqs)")
DEAD_LETTERED_SQL = "published_at IS NULL AND attempts >= :max"

# SQLSTATE classes in which PostgreSQL refuses the data itself (it will every time):
# 22 data exception, 23 integrity constraint violation, 54 program limit exceeded
_REFUSAL_CLASSES = ("22", "23", "54")


def refused_by_postgres(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "")[:2] in (
        _REFUSAL_CLASSES
    )


@dataclass
class PublishResult:
    """What the broker did with a batch: accepted ids, and ids it refused (with why)."""

    accepted: set[uuid.UUID]
    refused: dict[uuid.UUID, str] = field(default_factory=dict)


class Publisher(Protocol):
    """A broker's publishing side. Transient failures raise or leave ids unaccepted."""

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult: ...


class PostgresPublisher:
    """The whole batch in one bus-database transaction; when the broker refuses it, the
    batch is retried one event at a time to find the refused ones (a subject stops at its
    first refusal, keeping its order)."""

    def __init__(self, broker: PostgresBroker) -> None:
        self.broker = broker

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        try:
            await self.broker.publish(events)
            return PublishResult({e.event_id for e in events})
        except Exception as exc:
            if not refused_by_postgres(exc):
                raise
        result = PublishResult(set())
        blocked: set[str] = set()
        for event in events:
            if event.subject in blocked:
                continue
            try:
                await self.broker.publish([event])
            except Exception as exc:
                if not refused_by_postgres(exc):
                    return result  # an outage meanwhile: the rest is retried later
                result.refused[event.event_id] = f"{type(exc).__name__}: {exc}"[:2000]
                blocked.add(event.subject)
                continue
            result.accepted.add(event.event_id)
        return result


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
        max_attempts: int = 5,
        max_batch_size: int | None = None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.publisher = publisher
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        # a backlog is relayed in growing batches (doubling while they come back full, up
        # to this), so the per-batch round trips of a burst are amortised; one short batch
        # brings the size back to `batch_size`
        self.max_batch_size = max(batch_size, max_batch_size or 8 * batch_size)
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._wake = asyncio.Event()
        self._failures = 0

    async def run_once(self, limit: int | None = None) -> int:
        """Relay at most one batch (`limit` rows, default `batch_size`); returns how many
        rows were marked published."""
        async with self.engine.connect() as conn, conn.begin():
            if not (await conn.execute(_LOCK)).scalar():
                return 0  # another relay of this database is working
            rows = (
                await conn.execute(
                    _PENDING, {"n": limit or self.batch_size, "max": self.max_attempts}
                )
            ).all()
            if not rows:
                return 0
            # positional, not by name: a Row's attribute lookup per field was this loop's cost
            events = [OutgoingEvent(*r[1:]) for r in rows]
            try:
                result = await self.publisher.publish(events)
            except Exception as exc:
                result = PublishResult(set())
                error = f"{type(exc).__name__}: {exc}"[:2000]
            else:
                error = "not accepted by the broker"
            # losing this mark in a server crash only re-sends (same ids): no flush wait
            await conn.execute(text("SET LOCAL synchronous_commit = off"))
            done = [r.seq for r in rows if r.id in result.accepted]
            failed = [r for r in rows if r.id not in result.accepted]
            first_of_subject: dict[str, int] = {}
            for r in failed:
                first_of_subject.setdefault(r.subject, r.seq)
            refused = [
                r for r in failed if r.id in result.refused and first_of_subject[r.subject] == r.seq
            ]
            if done:
                await conn.execute(_MARK, {"seqs": done})
            for r in refused:  # one statement each: every refusal has its own reason
                charged = (
                    await conn.execute(_REFUSED, {"seqs": [r.seq], "err": result.refused[r.id]})
                ).one()
                if charged.attempts >= self.max_attempts:
                    OUTBOX_DEAD_LETTERS.labels(self.service).inc()
                    log.error(
                        "outbox row dead-lettered: the broker refused it",
                        seq=r.seq,
                        event_id=str(r.id),
                        topic=r.topic,
                        attempts=charged.attempts,
                        error=result.refused[r.id][:500],
                    )
            charged_seqs = {r.seq for r in refused}
            others = [r.seq for r in failed if r.seq not in charged_seqs]
            if others:
                await conn.execute(_FAILED, {"seqs": others, "err": error})
        RELAYED.labels(self.service).inc(len(done))
        if failed:
            RELAY_ERRORS.labels(self.service).inc()
            raise RelayError(f"{len(failed)} outbox rows not accepted: {error}")
        return len(done)

    async def run(self) -> None:
        """Relay forever: woken by NOTIFY on the service database, polling as a fallback."""
        listener = Listener(asyncpg_dsn(self.engine.url), OUTBOX_CHANNEL, self._on_notify)
        size = self.batch_size
        try:
            while True:
                await listener.ensure()
                self._wake.clear()
                try:
                    n = await self.run_once(size)
                    self._failures = 0
                except RelayError as exc:
                    self._failures += 1
                    delay = min(self.retry_base * 2 ** (self._failures - 1), self.retry_max)
                    log.warning("relay batch failed; retrying", error=str(exc), delay=delay)
                    size = self.batch_size
                    await asyncio.sleep(delay)
                    continue
                if n >= size:
                    size = min(size * 2, self.max_batch_size)
                    continue
                size = self.batch_size
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
