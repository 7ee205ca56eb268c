"""Idempotent consumption: the event id is recorded in the same transaction as the effect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, Sequence[Envelope]], Awaitable[None]]

_CLAIM = text(
    "INSERT INTO inbox (subscription, event_id, event_type) VALUES (:sub, :id, :type) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim(session: AsyncSession, subscription: str, envelope: Envelope) -> bool:
    """Record the event as processed; False when it already was (a redelivery)."""
    row = await session.execute(
        _CLAIM, {"sub": subscription, "id": envelope.id, "type": envelope.type}
    )
    return row.first() is not None


async def consume(
    session: AsyncSession, subscription: str, envelope: Envelope, handler: Handler
) -> bool:
    """Apply `handler` once per event id. Call inside the transaction that holds the effect."""
    if not await claim(session, subscription, envelope):
        return False
    await handler(session, envelope)
    return True
