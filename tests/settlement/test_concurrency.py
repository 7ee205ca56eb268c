"""Two consumers at once: a parked event and its deployment never pass each other, and the
same chain event in two transactions is applied once."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.settlement.handlers import SUBSCRIPTION, handle_chain_events
from tests.harness import count_rows, fetchval
from tests.settlement.factory import Escrow, deliver, redeliver


async def test_deployment_waits_for_a_concurrent_batch_parking_its_event(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as first, first.begin():
        # consumer 1 parks the approval but has not committed yet
        await consume_batch(first, SUBSCRIPTION, [e.approved(e.payer)], handle_chain_events)
        # consumer 2 gets the deployment meanwhile: it must wait, or it would miss the
        # parked approval and leave it parked forever
        second = asyncio.create_task(deliver(engine, [e.deployed(required=1)]))
        await asyncio.sleep(0.5)
        assert not second.done()
    await asyncio.wait_for(second, timeout=10)
    assert await count_rows(db, "parked_events") == 0
    assert await fetchval(db, "SELECT status FROM escrows") == "approved"


async def test_same_chain_event_in_two_transactions_applies_once(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed(required=2)])
    approval = e.approved(e.payee)
    copies = [redeliver(approval, new_id=True) for _ in range(6)]
    await asyncio.gather(*(deliver(engine, [c]) for c in copies))
    assert await count_rows(db, "escrow_approvals") == 1
    assert await count_rows(db, "escrow_history") == 2
    assert await count_rows(db, "escrow_anomalies") == 0
    assert await fetchval(db, "SELECT approvals_count FROM escrows") == 1
