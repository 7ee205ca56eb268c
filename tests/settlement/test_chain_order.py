"""Escrow state in chain order whatever the delivery order (issue 17, point 2).

The final escrow, its approvals and its current history/anomalies are those of the
events folded in chain order (block number, log index); an event that arrives after a
later one re-folds the escrow from that position.
"""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import asgi_client, count_rows, fetch, fetchval
from tests.settlement.factory import FAST, SPEC, USDC, Escrow, deliver, new_address
from tests.settlement.test_api import create_body


async def _current(db: str, table: str, column: str) -> list[tuple[str, str]]:
    rows = await fetch(
        db,
        f"SELECT event_type, {column} FROM {table} WHERE superseded_at IS NULL "
        "ORDER BY block_number, log_index",
    )
    return [(r["event_type"], r[column]) for r in rows]


async def test_a_release_delivered_before_its_approvals_ends_released(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    deployed = e.deployed(required=2, block=10, log=0)
    first, second = e.approved(e.payer, block=11, log=0), e.approved(e.payee, block=12, log=0)
    release = e.released(block=13, log=0)
    for event in (deployed, release, second, first):  # the release overtook the approvals
        await deliver(engine, [event])
    row = (await fetch(db, "SELECT status, approvals_count, last_block FROM escrows"))[0]
    assert (row["status"], row["approvals_count"], row["last_block"]) == ("released", 2, 13)
    assert await _current(db, "escrow_history", "to_status") == [
        ("escrow.deployed", "created"),
        ("escrow.approved", "created"),
        ("escrow.approved", "approved"),
        ("escrow.released", "released"),
    ]
    assert await _current(db, "escrow_anomalies", "reason") == []
    # the early anomaly is kept, marked superseded by the re-fold, never rewritten
    assert await count_rows(db, "escrow_anomalies", "superseded_at IS NOT NULL") == 1
    async with asgi_client(SPEC, db, **FAST) as client:
        current = (await client.get(f"/escrows/{e.address}/anomalies")).json()["items"]
        kept = await client.get(
            f"/escrows/{e.address}/anomalies", params={"include_superseded": "true"}
        )
    assert current == []
    assert [a["reason"] for a in kept.json()["items"]] == ["release_without_approval"]
    assert kept.json()["items"][0]["superseded_at"] is not None
    # downstream saw the escrow reach released
    statuses = await fetch(
        db, "SELECT envelope->'data'->>'to_status' AS s FROM outbox ORDER BY seq"
    )
    assert statuses[-1]["s"] == "released"


async def test_an_approval_by_the_new_arbiter_delivered_before_the_change_counts(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    new_arbiter = new_address()
    await deliver(engine, [e.deployed(required=1, block=10, log=0)])
    await deliver(engine, [e.approved(new_arbiter, block=12, log=0)])
    await deliver(engine, [e.arbiter_changed(new_arbiter, block=11, log=0)])
    row = (await fetch(db, "SELECT arbiter, status FROM escrows"))[0]
    assert (row["arbiter"], row["status"]) == (new_arbiter, "approved")
    assert await fetchval(db, "SELECT approver FROM escrow_approvals") == new_arbiter
    assert await _current(db, "escrow_anomalies", "reason") == []


async def test_a_replaced_arbiters_earlier_approval_no_longer_counts(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    old_arbiter, new_arbiter = e.arbiter, new_address()
    await deliver(engine, [e.deployed(required=2), e.approved(old_arbiter)])
    await deliver(engine, [e.arbiter_changed(new_arbiter), e.approved(e.payer)])
    row = (await fetch(db, "SELECT status, approvals_count FROM escrows"))[0]
    assert (row["status"], row["approvals_count"]) == ("created", 1)
    approvers = [r["approver"] for r in await fetch(db, "SELECT approver FROM escrow_approvals")]
    assert approvers == [e.payer]
    change = await fetchval(
        db, "SELECT details FROM escrow_history WHERE event_type = 'escrow.arbiter_changed'"
    )
    assert json.loads(change)["revoked_approval"] == old_arbiter
    # once the new arbiter approves too, the two current parties make it approved
    await deliver(engine, [e.approved(new_arbiter)])
    assert await fetchval(db, "SELECT status FROM escrows") == "approved"


async def test_an_arbiter_change_that_drops_an_approval_below_the_requirement(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed(required=1), e.approved(e.arbiter)])
    assert await fetchval(db, "SELECT status FROM escrows") == "approved"
    await deliver(engine, [e.arbiter_changed(new_address())])
    row = (await fetch(db, "SELECT status, approvals_count FROM escrows"))[0]
    assert (row["status"], row["approvals_count"]) == ("created", 0)
    assert await count_rows(db, "escrow_approvals") == 0


async def test_asset_symbols_are_unique_case_insensitively_and_lookups_are_exact(
    db: str,
) -> None:
    e = Escrow()
    async with asgi_client(SPEC, db, **FAST) as client:
        clash = {"chain_id": 1, "address": new_address(), "symbol": "usdc", "decimals": 6}
        r = await client.post("/assets", json=clash)
        assert r.status_code == 409, r.text
        assert await count_rows(db, "assets", "chain_id = 1 AND upper(symbol) = 'USDC'") == 1
        # the same symbol on another chain is another asset
        other = clash | {"chain_id": 10}
        assert (await client.post("/assets", json=other)).status_code == 201
        lower = await client.post(
            "/commands", json=create_body(e, asset="usdc"), headers={"Idempotency-Key": "c1"}
        )
        assert lower.status_code == 422, lower.text
        assert [x["field"] for x in lower.json()["errors"]] == ["asset"]
        assert "USDC" in lower.json()["detail"]  # the exact spelling is suggested
        exact = await client.post(
            "/commands", json=create_body(e, asset="USDC"), headers={"Idempotency-Key": "c2"}
        )
        assert exact.status_code == 201, exact.text
        assert exact.json()["asset_address"] == USDC


async def test_a_late_batch_re_folds_and_every_event_keeps_one_current_outcome(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    deployed, release = e.deployed(required=1, block=101, log=1), e.released(block=103, log=3)
    first, again = e.approved(e.payer, block=102, log=2), e.approved(e.payer, block=104, log=4)
    await deliver(engine, [deployed, release])
    await deliver(engine, [first, again])
    assert await fetchval(db, "SELECT status FROM escrows") == "released"
    assert await _current(db, "escrow_history", "to_status") == [
        ("escrow.deployed", "created"),
        ("escrow.approved", "approved"),
        ("escrow.released", "released"),
    ]
    assert await _current(db, "escrow_anomalies", "reason") == [
        ("escrow.approved", "after_terminal")
    ]


async def test_a_re_fold_keeps_the_rows_whose_outcome_did_not_change(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    await deliver(
        engine,
        [
            e.deployed(required=1, block=101, log=1),
            e.approved(e.payer, block=102, log=2),
            e.released(block=104, log=4),
        ],
    )
    await deliver(engine, [e.approved(e.payee, block=103, log=3)])  # late, changes nothing
    assert await count_rows(db, "escrow_history", "superseded_at IS NOT NULL") == 0
    assert await _current(db, "escrow_history", "to_status") == [
        ("escrow.deployed", "created"),
        ("escrow.approved", "approved"),
        ("escrow.approved", "approved"),
        ("escrow.released", "released"),
    ]
    assert await fetchval(db, "SELECT approvals_count FROM escrows") == 2
    # no second "released" for downstream: the status did not change
    assert await count_rows(db, "outbox") == 3
