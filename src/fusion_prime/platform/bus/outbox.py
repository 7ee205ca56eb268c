"""Transactional publishing: the event row is written in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.registry import topic as lookup_topic

# NOTIFY is transactional: the relay is woken when (and only if) the caller commits.
# Postgres folds identical notifications of one transaction into one.
_INSERT = text(
    "WITH ins AS (INSERT INTO outbox (id, topic, subject, event_type, envelope) "
    "VALUES (:id, :topic, :subject, :event_type, CAST(:envelope AS jsonb)) RETURNING 1) "
    "SELECT pg_notify('fp_outbox', '') FROM ins"
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
