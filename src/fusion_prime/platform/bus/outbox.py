"""Transactional publishing: the event row is written in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.registry import topic as lookup_topic

# The relay's wake-up channel; every way of writing outbox rows must notify it.
# NOTIFY is transactional: the relay is woken when (and only if) the caller commits.
# Postgres folds identical notifications of one transaction into one.
OUTBOX_CHANNEL = "fp_outbox"
NOTIFY_SQL = f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')"

_INSERT = text(
    "WITH ins AS (INSERT INTO outbox (id, topic, subject, event_type, envelope) "
    "VALUES (:id, :topic, :subject, :event_type, CAST(:envelope AS jsonb)) RETURNING 1) "
    f"SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM ins"
)


async def publish(
    session: AsyncSession,
    topic: str,
    *,
    event_type: str,
    subject: str,
    data: dict[str, Any],
    source: str,
    schema_version: int = 1,
) -> Envelope:
    """Queue an event in the outbox; it leaves only if the surrounding transaction commits."""
    t = lookup_topic(topic)
    if event_type not in t.event_types:
        raise ValueError(f"{event_type!r} is not an event type of {topic}")
    envelope = Envelope(
        type=event_type, source=source, subject=subject, data=data, schemaversion=schema_version
    )
    await publish_envelope(session, topic, envelope)
    return envelope


async def publish_envelope(session: AsyncSession, topic: str, envelope: Envelope) -> None:
    await session.execute(
        _INSERT,
        {
            "id": envelope.id,
            "topic": topic,
            "subject": envelope.subject,
            "event_type": envelope.type,
            "envelope": envelope.to_json(),
        },
    )


@dataclass(frozen=True)
class OutboxRow:
    """An already-serialised event for `publish_rows` (batch publishers build these)."""

    id: Any  # uuid.UUID
    topic: str
    subject: str
    event_type: str
    envelope_json: str


_INSERT_MANY = text(
    "WITH ins AS (INSERT INTO outbox (id, topic, subject, event_type, envelope) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:topics AS text[]), "
    "CAST(:subjects AS text[]), CAST(:types AS text[]), CAST(:envs AS jsonb[])) "
    "RETURNING 1) "
    f"SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM (SELECT 1 FROM ins LIMIT 1) AS one"
)


async def publish_rows(session: AsyncSession, rows: Sequence[OutboxRow]) -> None:
    """Set-based `publish_envelope` for a whole batch, in the caller's transaction."""
    if not rows:
        return
    await session.execute(
        _INSERT_MANY,
        {
            "ids": [r.id for r in rows],
            "topics": [r.topic for r in rows],
            "subjects": [r.subject for r in rows],
            "types": [r.event_type for r in rows],
            "envs": [r.envelope_json for r in rows],
        },
    )
