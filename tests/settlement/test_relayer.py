"""The chain relayer against a real anvil: escrows on chain become settlement rows, once.

Each test starts its own anvil (tests/evm.py) and deploys the committed EscrowFactory
build; the relayer runs in-process on the test's migrated settlement database and its
outbox rows go through settlement's real consumer (consume_batch + handler).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.settlement.chain import RangeTooLargeError
from tests.evm import Anvil, running_anvil
from tests.harness import count_rows, fetch, fetchval
from tests.settlement.chain import (
    CHAIN_ID,
    EscrowChain,
    drain,
    faulty_proxy,
    outbox_events,
    relayer,
)
from tests.settlement.factory import wait_for


@pytest.fixture
def node() -> Iterator[Anvil]:
    with running_anvil() as n:
        yield n


@pytest.fixture
def chain(node: Anvil) -> EscrowChain:
    return EscrowChain(node)


async def test_created_escrow_becomes_a_row_then_approvals_and_release_follow(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    cid = uuid.uuid4()
    escrow = chain.create(correlation=cid, amount=5 * 10**15)
    chain.act(escrow, "approve", 0, cid=uuid.uuid4().bytes)
    r = relayer(engine, chain.node.url, chain, confirmations=3)
    # not confirmed yet: nothing published, nothing in settlement
    chain.mine(1)
    await r.run_until_caught_up()
    assert await outbox_events(db) == []
    chain.mine(3)
    assert await r.run_until_caught_up() == 2
    await drain(engine, db)
    (row,) = await fetch(db, "SELECT * FROM escrows WHERE address = $1", escrow)
    assert row["status"] == "created"
    assert row["chain_id"] == CHAIN_ID
    assert row["payer"] == chain.accounts[0].lower()
    assert row["payee"] == chain.accounts[1].lower()
    assert row["amount"] == 5 * 10**15
    assert row["asset_decimals"] == 18
    events = await outbox_events(db)
    assert [e.type for e in events] == ["escrow.deployed", "escrow.approved"]
    assert events[0].data["correlation_id"] == str(cid)
    assert events[0].subject == escrow

    chain.act(escrow, "approve", 1)  # second of two: approved
    chain.act(escrow, "release", 2)
    chain.mine(3)
    assert await r.run_until_caught_up() == 2
    events = await drain(engine, db)
    assert "correlation_id" not in events[2].data  # zero id: absent
    status = await fetchval(db, "SELECT status FROM escrows WHERE address = $1", escrow)
    assert status == "released"
    assert await count_rows(db, "escrow_approvals", "escrow_address = $1", escrow) == 2
    history = await fetch(
        db, "SELECT to_status FROM escrow_history WHERE escrow_address = $1 ORDER BY id", escrow
    )
    assert [h["to_status"] for h in history] == ["created", "created", "approved", "released"]
    checkpoint = await fetchval(
        db, "SELECT block_number FROM relayer_checkpoints WHERE chain_id = $1", CHAIN_ID
    )
    assert checkpoint == chain.head() - 3
    # a second pass over the same chain publishes nothing again
    assert await r.run_until_caught_up() == 0
    assert len(await outbox_events(db)) == 4


async def test_a_2000_block_gap_is_backfilled_in_halved_ranges_without_a_skip(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    for _ in range(3):
        chain.create()
    chain.mine(2000)  # the gap (anvil mines empty blocks in ~5 ms each)
    for _ in range(3):
        chain.create()
    chain.mine(20)
    head = chain.head()
    with faulty_proxy(chain.node.url) as proxy:
        proxy.max_range = 300  # like a provider's block-range limit
        r = relayer(engine, proxy.url, chain, confirmations=12, max_block_range=2000)
        await r.run_until_caught_up()
        ranges = sorted(proxy.ranges)
    # every block from the start to head - 12 read exactly once, in ranges the node took
    covered = [b for frm, to in ranges for b in range(frm, to + 1)]
    assert covered == list(range(chain.deploy_block, head - 12 + 1))
    assert all(to - frm + 1 <= 300 for frm, to in ranges)
    await drain(engine, db)
    assert await count_rows(db, "escrows") == 6
    assert await count_rows(db, "relayer_logs") == 6
    assert await count_rows(db, "chain_events") == 6


async def test_a_single_block_the_node_refuses_is_an_error_not_a_skip(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    chain.create()
    chain.mine(5)
    with faulty_proxy(chain.node.url) as proxy:
        proxy.max_range = 0
        r = relayer(engine, proxy.url, chain, max_block_range=8)
        with pytest.raises(RangeTooLargeError):
            await r.run_until_caught_up()
    checkpoint = await fetchval(db, "SELECT block_number FROM relayer_checkpoints")
    assert checkpoint == chain.deploy_block - 1


async def test_429_and_5xx_are_retried_without_moving_the_checkpoint_then_it_recovers(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    escrow = chain.create()
    chain.mine(5)
    with faulty_proxy(chain.node.url) as proxy:
        r = relayer(engine, proxy.url, chain)
        proxy.fail_next = 5  # as many as one call's attempts: the step fails
        with pytest.raises(Exception, match="HTTP 429"):
            await r.step()
        assert (
            await fetchval(
                db,
                "SELECT count(*) FROM relayer_checkpoints WHERE block_number >= 0"
                " AND block_hash IS NOT NULL",
            )
            == 0
        )
        assert await outbox_events(db) == []
        proxy.fail_next, proxy.fail_status = 3, 503  # within one call's retries
        await r.run_until_caught_up()
        assert r.rpc.errors == 8
        assert proxy.fail_next == 0
    await drain(engine, db)
    assert await fetchval(db, "SELECT status FROM escrows WHERE address = $1", escrow) == "created"


async def test_a_node_that_goes_away_and_returns(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    chain.create()
    chain.mine(5)
    with faulty_proxy(chain.node.url) as proxy:
        r = relayer(engine, proxy.url, chain)
        task = asyncio.create_task(r.run())
        try:
            await wait_for(lambda: _published(db, 1))
            proxy.stop()
            second = chain.create()
            chain.mine(5)
            await asyncio.sleep(1.0)  # the relayer retries against a refused port
            assert len(await outbox_events(db)) == 1
            proxy.start()  # same port
            await wait_for(lambda: _published(db, 2), timeout=20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    events = await outbox_events(db)
    assert events[1].subject == second
    assert await count_rows(db, "relayer_logs") == 2


async def test_two_relayers_for_one_chain_publish_each_event_once(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    for _ in range(5):
        escrow = chain.create()
        chain.act(escrow, "approve", 0)
        chain.mine(30)
    chain.mine(5)
    first = relayer(engine, chain.node.url, chain, max_block_range=7)
    second = relayer(engine, chain.node.url, chain, max_block_range=7)
    # both stepping at once (no lock taken): the checkpoint check under FOR UPDATE decides
    await asyncio.gather(first.run_until_caught_up(), second.run_until_caught_up())
    assert len(await outbox_events(db)) == 10
    # and as services: one holds the chain's advisory lock, the other waits
    async with first.leadership() as lead, second.leadership() as other:
        assert lead is not None
        assert other is None
    await drain(engine, db)
    assert await count_rows(db, "chain_events") == 10


async def test_reorg_shallower_than_the_confirmations_reverts_nothing(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    kept = chain.create()
    chain.mine(6)
    r = relayer(engine, chain.node.url, chain, confirmations=4)
    await r.run_until_caught_up()
    dropped = chain.create()  # in the head block, unconfirmed
    chain.mine(2)
    await r.run_until_caught_up()
    # replace the last 3 blocks (the one with `dropped` among them) with empty ones
    chain.node.rpc("anvil_reorg", [3, []])
    chain.mine(6)
    await r.run_until_caught_up()
    events = await drain(engine, db)
    assert [e.subject for e in events] == [kept]
    assert dropped not in {e.subject for e in events}
    assert await fetchval(db, "SELECT reorgs FROM relayer_checkpoints") == 0
    assert await count_rows(db, "escrow_anomalies") == 0


async def test_reorg_deeper_than_the_confirmations_publishes_chain_reorged(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    escrow = chain.create()
    chain.mine(3)
    r = relayer(engine, chain.node.url, chain, confirmations=1)
    await r.run_until_caught_up()
    chain.act(escrow, "approve", 0)  # this block will be replaced
    chain.mine(2)
    await r.run_until_caught_up()
    await drain(engine, db)
    assert await count_rows(db, "escrow_approvals") == 1
    chain.node.rpc("anvil_reorg", [4, []])  # drops the approval, deeper than 1 confirmation
    chain.act(escrow, "approve", 1)  # the new branch has another approval
    chain.mine(2)
    await r.run_until_caught_up()
    events = await drain(engine, db)
    types = [e.type for e in events]
    assert types == ["escrow.deployed", "escrow.approved", "chain.reorged", "escrow.approved"]
    reorged = events[2]
    assert reorged.subject == escrow
    assert [x["type"] for x in reorged.data["removed"]] == ["escrow.approved"]
    assert await fetchval(db, "SELECT reorgs FROM relayer_checkpoints") == 1
    # settlement: an anomaly for the removed, applied approval; the new one applied
    (anomaly,) = await fetch(db, "SELECT * FROM escrow_anomalies")
    assert anomaly["reason"] == "chain_reorged"
    assert anomaly["escrow_address"] == escrow
    assert anomaly["event_type"] == "escrow.approved"
    assert anomaly["tx_hash"] == reorged.data["removed"][0]["tx_hash"]
    approvers = await fetch(db, "SELECT approver FROM escrow_approvals ORDER BY block_number")
    assert [a["approver"] for a in approvers] == [
        chain.accounts[0].lower(),
        chain.accounts[1].lower(),
    ]
    assert await count_rows(db, "relayer_logs") == 2  # the removed one is gone


async def _published(db: str, n: int) -> bool:
    return len(await outbox_events(db)) >= n


async def test_a_range_with_many_logs_is_published_in_several_whole_block_transactions(
    engine: AsyncEngine, db: str, chain: EscrowChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion_prime.settlement import relayer as module

    monkeypatch.setattr(module, "MAX_LOGS_PER_STEP", 2)
    for _ in range(3):
        escrow = chain.create()
        chain.act(escrow, "approve", 0)  # two logs per escrow, one block each
    chain.mine(3)
    r = relayer(engine, chain.node.url, chain)
    first = await r.step()
    assert first.published == 2  # blocks of the first escrow only, a whole-block cut
    assert await r.run_until_caught_up() == 4
    events = await drain(engine, db)
    assert len(events) == 6
    assert len({(e.data["tx_hash"], e.data["log_index"]) for e in events}) == 6
    assert await count_rows(db, "escrows") == 3


async def test_a_dispute_on_chain_holds_the_escrow_until_the_arbiter_decides(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    from web3.exceptions import ContractLogicError

    released = chain.create()
    refunded = chain.create()
    chain.act(released, "approve", 0)  # the payer approves (1 of 2) ...
    chain.act(released, "dispute", 1)  # ... and the payee contests
    with pytest.raises(ContractLogicError, match="disputed: only the arbiter"):
        chain.act(released, "release", 0)  # the payer cannot take it through
    chain.act(refunded, "dispute", 0)  # the payer contests the other one
    r = relayer(engine, chain.node.url, chain, confirmations=0)
    assert await r.run_until_caught_up() == 5  # 2 deployed, 1 approved, 2 disputed
    await drain(engine, db)
    rows = await fetch(db, "SELECT address, status FROM escrows ORDER BY seq")
    assert [(x["address"], x["status"]) for x in rows] == [
        (released, "disputed"),
        (refunded, "disputed"),
    ]
    (h,) = await fetch(
        db,
        "SELECT from_status, details FROM escrow_history WHERE escrow_address = $1 "
        "AND to_status = 'disputed'",
        released,
    )
    assert h["from_status"] == "created"
    assert json.loads(h["details"]) == {"disputed_by": chain.accounts[1].lower(), "role": "payee"}
    # the arbiter decides: one for the payee, one for the payer
    chain.act(released, "release", 2)
    chain.act(refunded, "refund", 2)
    assert await r.run_until_caught_up() == 2
    await drain(engine, db)
    statuses = await fetch(db, "SELECT address, status FROM escrows ORDER BY seq")
    assert [x["status"] for x in statuses] == ["released", "refunded"]
    history = await fetch(
        db,
        "SELECT escrow_address, from_status, to_status FROM escrow_history "
        "WHERE event_type IN ('escrow.released', 'escrow.refunded') ORDER BY id",
    )
    assert [(x["from_status"], x["to_status"]) for x in history] == [
        ("disputed", "released"),
        ("disputed", "refunded"),
    ]
    assert await count_rows(db, "escrow_anomalies") == 0
    # the published escrow state went through `disputed` for both
    published = await fetch(
        db,
        "SELECT envelope FROM outbox WHERE topic = 'settlement.escrows.v1' ORDER BY seq",
    )
    moves = [
        (e["data"]["address"], e["data"]["from_status"], e["data"]["to_status"])
        for e in (json.loads(p["envelope"]) for p in published)
    ]
    assert (released, "created", "disputed") in moves
    assert (refunded, "created", "disputed") in moves
    assert (released, "disputed", "released") in moves
    assert (refunded, "disputed", "refunded") in moves


async def test_an_erc20_escrow_is_funded_by_transfer_from_and_paid_out_in_the_token(
    engine: AsyncEngine, db: str, chain: EscrowChain
) -> None:
    from pathlib import Path

    from web3.logs import DISCARD

    from tests.evm import compile_solidity, deploy

    built = compile_solidity(Path(__file__).parent / "contracts" / "TestToken.sol")
    token = deploy(chain.node, built["TestToken"], 6, 10**12)  # 1,000,000.000000 TUSD
    payer, payee, arbiter = chain.accounts[:3]
    amount = 2_500_000_000  # 2,500 TUSD in base units
    approve = token.functions.approve(chain.factory.address, amount)
    chain._wait(approve.transact({"from": payer}))
    fn = chain.factory.functions.create(payee, arbiter, token.address, amount, 0, 2, b"\0" * 16)
    receipt = chain._wait(fn.transact({"from": payer}))
    # the receipt also holds the token's Transfer log: not one of the factory's events
    (deployed,) = chain.factory.events.EscrowDeployed().process_receipt(receipt, errors=DISCARD)
    escrow = str(deployed["args"]["escrow"]).lower()
    assert token.functions.balanceOf(deployed["args"]["escrow"]).call() == amount
    chain.act(escrow, "approve", 0)
    chain.act(escrow, "approve", 1)
    chain.act(escrow, "release", 1)
    assert token.functions.balanceOf(payee).call() == amount
    assert token.functions.balanceOf(deployed["args"]["escrow"]).call() == 0

    r = relayer(engine, chain.node.url, chain, confirmations=0)
    assert await r.run_until_caught_up() == 4
    events = await drain(engine, db)
    assert events[0].data["asset"] == str(token.address).lower()
    assert events[0].data["decimals"] == 6
    assert events[0].data["amount"] == str(amount)
    (row,) = await fetch(db, "SELECT * FROM escrows WHERE address = $1", escrow)
    assert row["asset_address"] == str(token.address).lower()
    assert row["asset_decimals"] == 6
    assert row["amount"] == amount
    assert row["status"] == "released"
