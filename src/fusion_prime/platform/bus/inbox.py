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


_CLAIM_MANY = text(
    "INSERT INTO inbox (subscription, event_id, event_type) "
    "SELECT :sub, ids.id, ids.type FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[])) "
    "AS ids(id, type) ON CONFLICT DO NOTHING RETURNING event_id"
)


def batch_handler(fn: BatchHandler) -> BatchHandler:
    """Mark a handler as taking a whole batch of (already de-duplicated) envelopes."""
    fn.__fp_batch__ = True  # type: ignore[attr-defined]
    return fn


def is_batch_handler(fn: object) -> bool:
    return bool(getattr(fn, "__fp_batch__", False))


async def consume_batch(
    session: AsyncSession,
    subscription: str,
    envelopes: Sequence[Envelope],
    handler: Handler | BatchHandler,
) -> int:
    """Claim every id in one statement and apply the handler to the new ones only.

    Runs inside one transaction: if the handler fails, neither the claims nor any
    effect remain. Returns how many envelopes were new.
    """
    result = await session.execute(
        _CLAIM_MANY,
        {
            "sub": subscription,
            "ids": [e.id for e in envelopes],
            "types": [e.type for e in envelopes],
        },
    )
    new_ids = {row[0] for row in result}
    fresh = [e for e in envelopes if e.id in new_ids]
    if not fresh:
        return 0
    if is_batch_handler(handler):
        await handler(session, fresh)  # type: ignore[arg-type]
    else:
        for envelope in fresh:
            await handler(session, envelope)  # type: ignore[arg-type]
    return len(fresh)
