"""The consumer of `settlement.events.v1` (subscription settlement-events-consumer)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler
from fusion_prime.platform.observability import get_logger
from fusion_prime.settlement.events import parse_envelope
from fusion_prime.settlement.reorgs import REASON, REORGED, record_reorgs
from fusion_prime.settlement.service import ANOMALIES, SERVICE, ingest

SUBSCRIPTION = "settlement-events-consumer"
log = get_logger(__name__)


@batch_handler
async def handle_chain_events(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
    """Apply a batch of chain events in the caller's transaction.

    Every envelope is parsed before anything is written: one that cannot be parsed raises
    InvalidChainEvent and the whole batch rolls back, so the bus retries it and finally
    dead-letters the bad event instead of it being dropped. `chain.reorged` events are
    handled after the batch's escrow events (reorgs.py says what they do).
    """
    reorgs = [e for e in envelopes if e.type == REORGED]
    items = [(e.id, parse_envelope(e)) for e in envelopes if e.type != REORGED]
    result = await ingest(session, items)
    log.debug(
        "chain events ingested",
        new=result.new,
        duplicates=result.duplicates,
        applied=result.applied,
        parked=result.parked,
        anomalies=result.anomalies,
    )
    if reorgs:
        recorded = await record_reorgs(session, reorgs)
        ANOMALIES.labels(SERVICE, REASON).inc(recorded)
        log.warning("chain reorganisation recorded", escrows=len(reorgs), anomalies=recorded)
