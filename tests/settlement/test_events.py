"""Chain events through the real batch handler, asserted on the tables."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.settlement.events import InvalidChainEvent
from tests.harness import count_rows, fetch, fetchval
from tests.settlement.factory import Escrow, deliver, envelope, new_address, redeliver


async def test_lifecycle_written_to_every_table(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    events = [e.deployed(amount="1000000000000000000000", required=2)]
    events += [e.approved(e.payer.upper().replace("0X", "0x")), e.approved(e.arbiter)]
    events.append(e.released())
    assert await deliver(engine, events) == 4

    row = (await fetch(db, "SELECT * FROM escrows WHERE address = $1", e.address))[0]
    assert row["status"] == "released"
    assert row["amount"] == 10**21
    assert row["asset_decimals"] == 6
    assert row["approvals_count"] == 2
    assert (row["payer"], row["payee"], row["arbiter"]) == (e.payer, e.payee, e.arbiter)
    approvals = await fetch(db, "SELECT approver, role FROM escrow_approvals ORDER BY block_number")
    assert [(a["approver"], a["role"]) for a in approvals] == [
        (e.payer, "payer"),
        (e.arbiter, "arbiter"),
    ]
    history = await fetch(
        db,
        "SELECT event_type, from_status, to_status, block_number FROM escrow_history "
        "WHERE escrow_address = $1 ORDER BY block_number",
        e.address,
    )
    assert [(h["event_type"], h["from_status"], h["to_status"]) for h in history] == [
        ("escrow.deployed", None, "created"),
        ("escrow.approved", "created", "created"),
        ("escrow.approved", "created", "approved"),
        ("escrow.released", "approved", "released"),
    ]
    # one outbox event per state change (created, approved, released), none for the
    # approval that did not change the state
    outbox = await fetch(db, "SELECT topic, subject, envelope FROM outbox ORDER BY seq")
    assert [o["topic"] for o in outbox] == ["settlement.escrows.v1"] * 3
    assert {o["subject"] for o in outbox} == {e.address}
    assert await count_rows(db, "chain_events") == 4
    assert await count_rows(db, "inbox", "subscription = $1", "settlement-events-consumer") == 4


async def test_redelivery_and_reemitted_events_change_nothing(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    deployed, approved = e.deployed(required=2), e.approved(e.payer)
    await deliver(engine, [deployed, approved])
    # the bus redelivers the same envelope; the indexer re-emits the same log in a new one
    assert await deliver(engine, [deployed, approved]) == 0
    assert await deliver(engine, [redeliver(approved, new_id=True)]) == 1
    # and duplicates inside one batch
    release = e.refunded()
    await deliver(engine, [release, redeliver(release, new_id=True)])
    assert await count_rows(db, "chain_events") == 3
    assert await count_rows(db, "escrow_history") == 3
    assert await count_rows(db, "escrow_anomalies") == 0
    assert await fetchval(db, "SELECT approvals_count FROM escrows") == 1
    assert await fetchval(db, "SELECT status FROM escrows") == "refunded"


async def test_out_of_order_events_are_parked_then_applied_in_chain_order(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    deployed = e.deployed(required=2, block=10, log=1)
    first = e.approved(e.payee, block=11, log=0)
    second = e.approved(e.payer, block=12, log=3)
    release = e.released(block=13, log=0)
    # delivered backwards, one batch each
    for event in (release, second, first):
        await deliver(engine, [event])
    assert await count_rows(db, "parked_events") == 3
    assert await count_rows(db, "escrows") == 0
    assert await count_rows(db, "escrow_anomalies") == 0

    await deliver(engine, [deployed])
    assert await count_rows(db, "parked_events") == 0
    history = await fetch(
        db,
        "SELECT event_type, to_status FROM escrow_history ORDER BY id",
    )
    assert [(h["event_type"], h["to_status"]) for h in history] == [
        ("escrow.deployed", "created"),
        ("escrow.approved", "created"),
        ("escrow.approved", "approved"),
        ("escrow.released", "released"),
    ]
    assert await fetchval(db, "SELECT status FROM escrows") == "released"


async def test_conflicts_become_anomalies_not_state(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    stranger = new_address()
    await deliver(engine, [e.deployed(required=1)])
    await deliver(engine, [e.released()])  # release before any approval
    await deliver(engine, [e.approved(stranger)])
    await deliver(engine, [e.approved(e.payee)])
    await deliver(engine, [e.approved(e.payee)])  # a second approval by the same party
    await deliver(engine, [e.refunded()])
    await deliver(engine, [e.released()])  # release of a refunded escrow
    await deliver(engine, [e.deployed()])  # deployed twice
    reasons = await fetch(
        db, "SELECT reason, status_at_event FROM escrow_anomalies ORDER BY block_number"
    )
    assert [(r["reason"], r["status_at_event"]) for r in reasons] == [
        ("release_without_approval", "created"),
        ("approver_not_allowed", "created"),
        ("duplicate_approval", "approved"),
        ("after_terminal", "refunded"),
        ("duplicate_deployment", "refunded"),
    ]
    assert await fetchval(db, "SELECT status FROM escrows") == "refunded"
    assert await fetchval(db, "SELECT approvals_count FROM escrows") == 1
    assert await count_rows(db, "escrow_approvals", "approver = $1", stranger) == 0
    metric = REGISTRY.get_sample_value(
        "fp_settlement_anomalies_total",
        {"service": "settlement", "reason": "approver_not_allowed"},
    )
    assert metric is not None
    assert metric >= 1


async def test_arbiter_change_moves_the_right_to_approve(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    new_arbiter = new_address()
    await deliver(engine, [e.deployed(required=1), e.arbiter_changed(new_arbiter)])
    await deliver(engine, [e.approved(e.arbiter)])  # the old arbiter
    assert await fetchval(db, "SELECT reason FROM escrow_anomalies") == "approver_not_allowed"
    await deliver(engine, [e.approved(new_arbiter)])
    row = (await fetch(db, "SELECT arbiter, status FROM escrows"))[0]
    assert (row["arbiter"], row["status"]) == (new_arbiter, "approved")


@pytest.mark.parametrize(
    ("event_type", "change"),
    [
        ("escrow.deployed", {"amount": "-5"}),
        ("escrow.deployed", {"amount": 1.5}),
        ("escrow.deployed", {"approvals_required": 4}),
        ("escrow.deployed", {"payer": "0x1234"}),
        ("escrow.deployed", {"tx_hash": "0xnothex"}),
        ("escrow.approved", {"approver": None}),
        ("escrow.exploded", {}),
    ],
)
async def test_unparseable_event_raises_and_writes_nothing(
    db: str, engine: AsyncEngine, event_type: str, change: dict[str, object]
) -> None:
    e = Escrow()
    good = e.deployed()
    data = dict(good.data)
    if event_type == "escrow.approved":
        data["approver"] = e.payer
    data.update(change)
    bad = envelope(event_type, data)
    with pytest.raises(InvalidChainEvent):
        await deliver(engine, [e.deployed(), bad])
    for table in ("escrows", "chain_events", "inbox", "escrow_history", "outbox"):
        assert await count_rows(db, table) == 0, table


async def test_history_rows_are_immutable(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed()])
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        for sql in (
            "UPDATE escrow_history SET to_status = 'released'",
            "DELETE FROM escrow_history",
            "DELETE FROM chain_events",
        ):
            with pytest.raises(asyncpg.exceptions.RestrictViolationError):
                await conn.execute(sql)
    finally:
        await conn.close()
    assert await count_rows(db, "escrow_history") == 1
