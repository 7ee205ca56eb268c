"""settlement's side of `chain.reorged`: anomalies for applied events, un-parking parked ones."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.bus.envelope import Envelope
from tests.harness import count_rows, fetch, fetchval
from tests.settlement.factory import Escrow, deliver


def reorged(escrow: Escrow, *removed: Envelope) -> Envelope:
    data = {
        "chain_id": escrow.chain_id,
        "escrow": escrow.address,
        "ancestor_block": 1,
        "ancestor_hash": "0x" + "ab" * 32,
        "removed": [
            {"type": e.type, "tx_hash": e.data["tx_hash"], "log_index": e.data["log_index"],
             "block_number": e.data["block_number"], "block_hash": "0x" + "cd" * 32}
            for e in removed
        ],
    }  # fmt: skip
    return Envelope(type="chain.reorged", source="settlement-relayer", subject=escrow.address,
                    data=data)  # fmt: skip


async def test_a_removed_applied_event_is_an_anomaly_and_the_state_is_kept(
    engine: AsyncEngine, db: str
) -> None:
    e = Escrow()
    deployed, approval = e.deployed(), e.approved(e.payer)
    await deliver(engine, [deployed, approval])
    await deliver(engine, [reorged(e, approval)])  # a batch of only a reorg
    (anomaly,) = await fetch(db, "SELECT * FROM escrow_anomalies")
    assert anomaly["reason"] == "chain_reorged"
    assert anomaly["event_type"] == "escrow.approved"
    assert anomaly["status_at_event"] == "created"
    assert await count_rows(db, "escrow_approvals") == 1  # history is not rewritten
    # delivered again (at least once): nothing more
    await deliver(engine, [reorged(e, approval)])
    assert await count_rows(db, "escrow_anomalies") == 1


async def test_a_removed_parked_event_is_unparked_so_it_never_applies(
    engine: AsyncEngine, db: str
) -> None:
    e = Escrow()
    approval = e.approved(e.payer, block=200)
    await deliver(engine, [approval])
    assert await count_rows(db, "parked_events") == 1
    await deliver(engine, [reorged(e, approval)])
    assert await count_rows(db, "parked_events") == 0
    await deliver(engine, [e.deployed(block=150)])
    assert await count_rows(db, "escrow_approvals") == 0
    assert await fetchval(db, "SELECT reason FROM escrow_anomalies") == "chain_reorged"
