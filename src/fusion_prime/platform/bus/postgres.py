"""The PostgreSQL broker: durable per-subscription queues in the bus database.

Why one row per (subscription, event) rather than one log plus per-subscription
cursors: every subscription needs its own delivery state per message (lease, attempts,
back-off, error, ack) to retry or dead-letter one message without holding back the
others; with a cursor that state would live in a side table anyway, and a cursor cannot
skip a poisoned message. Subscriptions per topic are few (at most two here), so the
duplicated envelope costs little, and leasing is a plain `FOR UPDATE SKIP LOCKED` on rows.

Leasing is serialised per subscription by a transaction-level advisory lock. That keeps
per-subject order exact with several consumers: a message is leased only when no earlier
message of its subject is still in flight or backing off, and two leasers cannot both
take consecutive messages of one subject. The lock is held for one short statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import Counter
from sqlalchemy.engine import URL

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.registry import TOPICS
from fusion_prime.platform.observability import get_logger

log = get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
NOTIFY_CHANNEL = "fp_bus"

DEAD_LETTERS = Counter(
    "fp_bus_dead_letters_total", "Messages moved to the dead-letter table", ["subscription"]
)
ACKED = Counter("fp_bus_messages_acked_total", "Messages acknowledged", ["subscription"])
FAILED = Counter("fp_bus_messages_failed_total", "Failed delivery attempts", ["subscription"])
PUBLISHED = Counter("fp_bus_events_published_total", "Events accepted by the broker", ["topic"])


@dataclass(frozen=True)
class OutgoingEvent:
    """One event on its way to the broker (from an outbox row or the CLI)."""

    event_id: uuid.UUID
    topic: str
    subject: str
    event_type: str
    envelope_json: str


@dataclass(frozen=True)
class LeasedMessage:
    id: int
    event_id: uuid.UUID
    subject: str
    envelope_json: str
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    subscription: str
    event_id: uuid.UUID
    topic: str
    subject: str
    event_type: str
    attempts: int
    error: str
    dead_at: datetime
    replayed_at: datetime | None
    replayed_by: str | None = None


_PUBLISH = """
INSERT INTO bus_messages (subscription, event_id, topic, subject, event_type, envelope)
SELECT s.name, x.event_id, x.topic, x.subject, x.event_type, CAST(x.envelope AS jsonb)
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
     WITH ORDINALITY AS x(event_id, topic, subject, event_type, envelope, ord)
JOIN bus_subscriptions s ON s.topic = x.topic
ORDER BY x.ord, s.name
ON CONFLICT (subscription, event_id) DO NOTHING
"""

# A subject is blocked while any of its pending messages is leased or backing off, so a
# later message never overtakes an earlier one (only a message delivered at least once,
# attempts > 0, can be leased or backing off: a small partial index covers exactly those).
# Written so the plan stays index-driven whatever the statistics say: the blocked
# subjects are one hashed set, the candidates walk the partial (subscription, id) index,
# and the update looks rows up by id.
_LEASE = """
WITH blocked AS MATERIALIZED (
    SELECT DISTINCT subject FROM bus_messages
    WHERE subscription = $1 AND acked_at IS NULL AND attempts > 0
      AND (available_at > now() OR lease_until > now())
), cand AS (
    SELECT m.id FROM bus_messages m
    WHERE m.subscription = $1 AND m.acked_at IS NULL
      AND m.available_at <= now()
      AND (m.lease_until IS NULL OR m.lease_until <= now())
      AND m.subject NOT IN (SELECT subject FROM blocked)
    ORDER BY m.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE bus_messages m
SET lease_until = now() + make_interval(secs => $3), lease_token = $4,
    attempts = m.attempts + 1
WHERE m.id = ANY(ARRAY(SELECT id FROM cand))
RETURNING m.id, m.event_id, m.subject, CAST(m.envelope AS text) AS envelope, m.attempts
"""

_DEAD_LETTER = """
WITH d AS (
    DELETE FROM bus_messages WHERE id = $1 AND lease_token = $2
    RETURNING subscription, event_id, topic, subject, event_type, envelope, attempts, created_at
)
INSERT INTO bus_dead_letters
    (subscription, event_id, topic, subject, event_type, envelope, attempts, error, enqueued_at)
SELECT subscription, event_id, topic, subject, event_type, envelope, attempts, $3, created_at
FROM d RETURNING id
"""


# Leases, acks, nacks and releases are soft state: if the server loses the last of them
# in a crash, a message is merely delivered again (the inbox absorbs it). They skip the
# WAL flush wait; accepting an event (publish), dead letters and replays stay durable.
_SOFT_STATE = "SET LOCAL synchronous_commit = off"

# The candidates must be walked in `ix_bus_messages_pending` order and the walk stopped at
# the LIMIT. With stale statistics (a busy queue table; no autovacuum on some servers) the
# planner took a bitmap scan of every pending entry plus a sort instead: that reads the
# whole backlog's rows for each lease, and a bitmap scan never marks the entries of acked
# (dead) row versions as dead in the index, so every later lease revisits them too (a
# 100,000-event relayer backfill: 130 us per leased message, growing with the backlog, vs
# about 25 with the index walk). Only for the lease's own transaction.
_INDEX_WALK = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off"


class PostgresBroker:
    """Publishing, leasing, acks, retries and dead letters on the bus database."""

    def __init__(self, url: str | URL, *, pool_size: int = 4, app_name: str = "fp-bus") -> None:
        self.dsn = asyncpg_dsn(url)
        self.pool_size = pool_size
        self.app_name = app_name
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> PostgresBroker:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings={"application_name": self.app_name},
                timeout=10,
            )
        return self

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> PostgresBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("broker not started")
        return self._pool

    # -- topology -------------------------------------------------------------
    async def ensure_subscription(self, topic: str, subscription: str, max_attempts: int) -> None:
        """Create the topic and subscription if missing (messages fan out from then on)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO bus_topics (name) VALUES ($1) ON CONFLICT DO NOTHING", topic
            )
            await conn.execute(
                "INSERT INTO bus_subscriptions (name, topic, max_attempts) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET max_attempts = excluded.max_attempts",
                subscription,
                topic,
                max_attempts,
            )
            current = await conn.fetchval(
                "SELECT topic FROM bus_subscriptions WHERE name = $1", subscription
            )
            if current != topic:
                raise ValueError(
                    f"subscription {subscription!r} belongs to {current!r}, not {topic!r}"
                )

    async def sync_registry(self) -> int:
        """Declare every registry topic and subscription; returns how many subscriptions."""
        n = 0
        for t in TOPICS:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bus_topics (name) VALUES ($1) ON CONFLICT DO NOTHING", t.name
                )
            for s in t.subscriptions:
                await self.ensure_subscription(t.name, s.name, s.max_attempts)
                n += 1
        return n

    # -- publishing -------------------------------------------------------------
    async def publish(self, events: Sequence[OutgoingEvent]) -> None:
        """Accept the events durably (one transaction) or raise; fans out per subscription.

        A re-sent event (same id) is ignored for subscriptions that still hold it.
        """
        if not events:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                _PUBLISH,
                [e.event_id for e in events],
                [e.topic for e in events],
                [e.subject for e in events],
                [e.event_type for e in events],
                [e.envelope_json for e in events],
            )
            for topic in sorted({e.topic for e in events}):
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, topic)
        per_topic = Counter_(e.topic for e in events)
        for topic, n in per_topic.items():
            PUBLISHED.labels(topic).inc(n)

    # -- consuming -----------------------------------------------------------------
    async def lease(
        self, subscription: str, limit: int, visibility_timeout: float, token: uuid.UUID
    ) -> list[LeasedMessage]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"{_SOFT_STATE}; {_INDEX_WALK}")
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('fp_bus_lease:' || $1))", subscription
            )
            rows = await conn.fetch(_LEASE, subscription, limit, visibility_timeout, token)
        out = [
            LeasedMessage(r["id"], r["event_id"], r["subject"], r["envelope"], r["attempts"])
            for r in rows
        ]
        out.sort(key=lambda m: m.id)
        return out

    async def ack(
        self, subscription: str, ids: Sequence[int], token: uuid.UUID, *, retention: float
    ) -> int:
        """Acknowledge leased messages; kept `retention` seconds (0 deletes at once)."""
        if not ids:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_SOFT_STATE)
            if retention <= 0:
                status = await conn.execute(
                    "DELETE FROM bus_messages WHERE id = ANY($1::bigint[]) AND lease_token = $2",
                    list(ids),
                    token,
                )
            else:
                status = await conn.execute(
                    "UPDATE bus_messages SET acked_at = now(), lease_until = NULL "
                    "WHERE id = ANY($1::bigint[]) AND lease_token = $2",
                    list(ids),
                    token,
                )
        n = int(status.split()[-1])
        ACKED.labels(subscription).inc(n)
        return n

    async def nack(
        self, subscription: str, message_id: int, token: uuid.UUID, error: str, delay: float
    ) -> None:
        """Record a failed attempt and make the message available again after `delay` s."""
        FAILED.labels(subscription).inc()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_SOFT_STATE)
            await conn.execute(
                "UPDATE bus_messages SET lease_until = NULL, lease_token = NULL, last_error = $3, "
                "available_at = now() + make_interval(secs => $4) "
                "WHERE id = $1 AND lease_token = $2",
                message_id,
                token,
                error,
                delay,
            )

    async def release(self, ids: Iterable[int], token: uuid.UUID) -> None:
        """Give leased messages back untouched (not an attempt): used behind a failed one."""
        ids = list(ids)
        if not ids:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_SOFT_STATE)
            await conn.execute(
                "UPDATE bus_messages SET lease_until = NULL, lease_token = NULL, "
                "attempts = greatest(attempts - 1, 0) "
                "WHERE id = ANY($1::bigint[]) AND lease_token = $2",
                ids,
                token,
            )

    async def dead_letter(
        self, subscription: str, message_id: int, token: uuid.UUID, error: str
    ) -> int | None:
        """Move a leased message to the dead-letter table; the subject's stream continues."""
        async with self.pool.acquire() as conn, conn.transaction():
            dead_id = await conn.fetchval(_DEAD_LETTER, message_id, token, error)
            if dead_id is not None:
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, "")
        if dead_id is not None:
            DEAD_LETTERS.labels(subscription).inc()
            log.warning(
                "message dead-lettered",
                subscription=subscription,
                dead_letter_id=dead_id,
                error=error[:500],
            )
        return int(dead_id) if dead_id is not None else None

    # -- operations ---------------------------------------------------------------
    async def dead_letters(
        self, subscription: str | None = None, *, include_replayed: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        rows = await self.pool.fetch(
            "SELECT id, subscription, event_id, topic, subject, event_type, attempts, error, "
            "dead_at, replayed_at, replayed_by FROM bus_dead_letters "
            "WHERE ($1::text IS NULL OR subscription = $1) AND ($2 OR replayed_at IS NULL) "
            "ORDER BY id LIMIT $3",
            subscription,
            include_replayed,
            limit,
        )
        return [DeadLetter(**dict(r)) for r in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        row = await self.pool.fetchrow(
            "SELECT id, subscription, event_id, topic, subject, event_type, attempts, error, "
            "dead_at, replayed_at, replayed_by FROM bus_dead_letters WHERE id = $1",
            dead_letter_id,
        )
        return DeadLetter(**dict(row)) if row is not None else None

    async def replay(self, dead_letter_id: int, *, by: str) -> DeadLetter:
        """Queue a dead letter again with fresh attempts, recording who asked (`by`);
        raises KeyError/ValueError."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM bus_dead_letters WHERE id = $1 FOR UPDATE", dead_letter_id
            )
            if row is None:
                raise KeyError(f"no dead letter with id {dead_letter_id}")
            if row["replayed_at"] is not None:
                raise ValueError(
                    f"dead letter {dead_letter_id} was already replayed at {row['replayed_at']}"
                )
            exists = await conn.fetchval(
                "SELECT 1 FROM bus_subscriptions WHERE name = $1", row["subscription"]
            )
            if not exists:
                raise ValueError(f"subscription {row['subscription']!r} no longer exists")
            await conn.execute(
                "INSERT INTO bus_messages (subscription, event_id, topic, subject, event_type, "
                "envelope) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (subscription, event_id) DO UPDATE SET acked_at = NULL, "
                "attempts = 0, available_at = now(), lease_until = NULL, lease_token = NULL",
                row["subscription"],
                row["event_id"],
                row["topic"],
                row["subject"],
                row["event_type"],
                row["envelope"],
            )
            replayed = await conn.fetchval(
                "UPDATE bus_dead_letters SET replayed_at = now(), replayed_by = $2 WHERE id = $1 "
                "RETURNING replayed_at",
                dead_letter_id,
                by,
            )
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, row["topic"])
        return DeadLetter(
            id=row["id"],
            subscription=row["subscription"],
            event_id=row["event_id"],
            topic=row["topic"],
            subject=row["subject"],
            event_type=row["event_type"],
            attempts=row["attempts"],
            error=row["error"],
            dead_at=row["dead_at"],
            replayed_at=replayed,
            replayed_by=by,
        )

    async def cleanup(self, retention: float) -> int:
        """Delete messages acknowledged more than `retention` seconds ago."""
        status = await self.pool.execute(
            "DELETE FROM bus_messages WHERE acked_at IS NOT NULL "
            "AND acked_at < now() - make_interval(secs => $1)",
            retention,
        )
        return int(status.split()[-1])

    async def status(self, only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per subscription (all, or `only` these): ready, leased, acked, dead letters and
        when the oldest unacknowledged message was queued."""
        rows = await self.pool.fetch(
            """
            SELECT s.name AS subscription, s.topic,
                   count(m.id) FILTER (WHERE m.acked_at IS NULL
                       AND (m.lease_until IS NULL OR m.lease_until <= now())) AS ready,
                   count(m.id) FILTER (WHERE m.acked_at IS NULL
                       AND m.lease_until > now()) AS leased,
                   count(m.id) FILTER (WHERE m.acked_at IS NOT NULL) AS acked,
                   (SELECT count(*) FROM bus_dead_letters d
                     WHERE d.subscription = s.name AND d.replayed_at IS NULL) AS dead,
                   min(m.created_at) FILTER (WHERE m.acked_at IS NULL) AS oldest_unacked_at
            FROM bus_subscriptions s LEFT JOIN bus_messages m ON m.subscription = s.name
            WHERE ($1::text[] IS NULL OR s.name = ANY($1::text[]))
            GROUP BY s.name, s.topic ORDER BY s.topic, s.name
            """,
            list(only) if only is not None else None,
        )
        return [dict(r) for r in rows]

    async def pending(self, subscription: str) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM bus_messages WHERE subscription = $1 AND acked_at IS NULL",
                subscription,
            )
        )


class Listener:
    """A LISTEN connection that sets an asyncio.Event on each notification.

    Notifications are only a wake-up: every loop also polls, so a lost connection costs
    latency, never messages. `ensure()` reconnects lazily.
    """

    def __init__(self, dsn: str, channel: str, wake: Callable[[str], None]) -> None:
        self.dsn = dsn
        self.channel = channel
        self.wake = wake
        self._conn: asyncpg.Connection | None = None

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.wake(payload)

    async def ensure(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=5)
            await self._conn.add_listener(self.channel, self._on_notify)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            self._conn = None
            log.warning("LISTEN unavailable; polling only", channel=self.channel, error=str(exc))

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                conn.terminate()


async def migrate_bus(url: str | URL, *, sync_registry: bool = True) -> int:
    """Bring the bus database to head and declare the registry's subscriptions."""
    from fusion_prime.platform.database import normalise_database_url
    from fusion_prime.platform.migrations import upgrade_url

    norm = normalise_database_url(
        str(url) if isinstance(url, str) else url.render_as_string(False), service="bus"
    )
    await upgrade_url(norm, MIGRATIONS_DIR)
    if not sync_registry:
        return 0
    async with PostgresBroker(norm, pool_size=1) as broker:
        return await broker.sync_registry()
