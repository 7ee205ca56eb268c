"""`chain.reorged` on settlement.events.v1: chain events the relayer had published were
removed from the chain by a reorganisation deeper than the confirmation depth.

What settlement does: it records an ANOMALY (reason `chain_reorged`) for each removed
event it had stored and applied, and keeps the escrow's state and history as they are
(history is immutable; an operator reviews, and the chain's new content arrives as
ordinary events the relayer re-reads). A removed event still parked (its escrow never
deployed) is un-parked so it is never applied. Removed events settlement never stored,
or already recorded as an anomaly (never applied), need nothing.
The relayer publishes one `chain.reorged` per escrow with the escrow as subject, so it
arrives after that escrow's removed events (order per subject).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.settlement import repository as repo
from fusion_prime.settlement.domain import ChainRef
from fusion_prime.settlement.events import Address, InvalidChainEvent, TxHash

REORGED = "chain.reorged"
REASON = "chain_reorged"


class RemovedLog(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    tx_hash: TxHash
    log_index: int = Field(ge=0, strict=True)
    block_number: int = Field(ge=0, strict=True)
    block_hash: str


class ReorgedData(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    chain_id: int = Field(gt=0, strict=True)
    escrow: Address
    ancestor_block: int = Field(ge=0, strict=True)
    ancestor_hash: str
    removed: list[RemovedLog]


def parse(envelope: Envelope) -> ReorgedData:
    try:
        return ReorgedData.model_validate(envelope.data)
    except ValidationError as exc:
        raise InvalidChainEvent(f"invalid {REORGED} data: {exc.errors()}") from exc


async def record_reorgs(session: AsyncSession, envelopes: Sequence[Envelope]) -> int:
    """Anomalies for the removed events that settlement had applied; how many recorded."""
    reorgs = [parse(e) for e in envelopes]
    if not reorgs:
        return 0
    await repo.lock_escrows(session, sorted({r.escrow for r in reorgs}))
    rows: list[repo.AnomalyRow] = []
    for reorg in reorgs:
        found = (
            await session.execute(
                text(
                    "SELECT c.id, c.tx_hash, c.log_index, c.block_number, c.event_type, "
                    "e.status, p.chain_event_id IS NOT NULL AS parked "
                    "FROM chain_events c "
                    "JOIN unnest(CAST(:t AS text[]), CAST(:l AS integer[])) AS r(tx, li) "
                    "ON c.tx_hash = r.tx AND c.log_index = r.li "
                    "LEFT JOIN escrows e ON e.address = c.escrow_address "
                    "LEFT JOIN parked_events p ON p.chain_event_id = c.id "
                    "WHERE c.chain_id = :c AND NOT EXISTS "
                    "(SELECT 1 FROM escrow_anomalies a WHERE a.chain_event_id = c.id) "
                    "ORDER BY c.block_number, c.log_index"
                ),
                {
                    "c": reorg.chain_id,
                    "t": [r.tx_hash for r in reorg.removed],
                    "l": [r.log_index for r in reorg.removed],
                },
            )
        ).all()
        parked = [f.id for f in found if f.parked]
        if parked:
            await session.execute(
                text(
                    "DELETE FROM parked_events WHERE chain_event_id = ANY(CAST(:ids AS bigint[]))"
                ),
                {"ids": parked},
            )
        for f in found:
            rows.append(
                repo.AnomalyRow(
                    escrow=reorg.escrow,
                    chain_event_id=f.id,
                    ref=ChainRef(f.block_number, f.log_index, reorg.chain_id, f.tx_hash),
                    event_type=f.event_type,
                    reason=REASON,
                    detail=(
                        f"removed from the chain by a reorganisation above block "
                        f"{reorg.ancestor_block} ({reorg.ancestor_hash}); "
                        + (
                            "it was parked and is now dropped"
                            if f.parked
                            else "its applied effect is kept for review"
                        )
                    ),
                    status_at_event=f.status,
                )
            )
    await repo.insert_anomalies(session, rows)
    return len(rows)
