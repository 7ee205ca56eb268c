"""A test-only consuming service: one test topic, an effects table, a curable poison.

It publishes and consumes `test.stream.v1` through the real outbox, relay, postgres broker
and inbox, with an explicit Consumer triple so the production registry stays untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.consumer import Consumer
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler
from fusion_prime.platform.spec import ServiceSpec

TOPIC = "test.stream.v1"
SUBSCRIPTION = "test-stream-consumer"
MIGRATIONS = Path(__file__).parent / "migrations"


class PoisonError(Exception):
    pass


@batch_handler
async def apply_effects(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
    """Insert one effect row per event; an uncured poison event fails the whole batch."""
    poisoned = sorted({e.subject for e in envelopes if e.data.get("poison")})
    if poisoned:
        cured = set(
            (
                await session.execute(
                    text("SELECT subject FROM cures WHERE subject = ANY(:s)"), {"s": poisoned}
                )
            ).scalars()
        )
        if set(poisoned) - cured:
            raise PoisonError(f"poison event for {sorted(set(poisoned) - cured)}")
    await session.execute(
        text(
            "INSERT INTO effects (event_id, subject, n) "
            "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:subjects AS text[]), "
            "CAST(:ns AS int[]))"
        ),
        {
            "ids": [e.id for e in envelopes],
            "subjects": [e.subject for e in envelopes],
            "ns": [int(e.data.get("n", 0)) for e in envelopes],
        },
    )


def consumer(max_attempts: int = 5) -> Consumer:
    return Consumer(TOPIC, SUBSCRIPTION, apply_effects, max_attempts=max_attempts)


SPEC = ServiceSpec(
    name="busconsumer",
    db_slug="busconsumer",
    default_port=8198,
    migrations_dir=MIGRATIONS,
    publishes=(TOPIC,),
    consumes=(Consumer(TOPIC, SUBSCRIPTION, "tests.platform.bus.consumerapp:apply_effects"),),
    description="test-only consumer of test.stream.v1",
)
