"""The relayer in real processes: `serve settlement` with ETH_RPC_URL, kill -9 in the middle
of a backfill, restart; and `fusion-prime settlement relay` beside a settlement service."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.evm import Anvil, running_anvil
from tests.harness import ServiceProcess, count_rows, create_bus_database_sync, fetchval, running
from tests.settlement.chain import CHAIN_ID, EscrowChain
from tests.settlement.factory import FAST, wait_for


@pytest.fixture
def node() -> Iterator[Anvil]:
    with running_anvil() as n:
        yield n


def relayer_env(chain: EscrowChain, **extra: str) -> dict[str, str]:
    return (
        FAST
        | {
            "ETH_RPC_URL": chain.node.url,
            "SETTLEMENT_CHAIN_ID": str(CHAIN_ID),
            "SETTLEMENT_FACTORY_ADDRESS": chain.address,
            "SETTLEMENT_START_BLOCK": str(chain.deploy_block),
            "SETTLEMENT_CONFIRMATIONS": "2",
            "SETTLEMENT_RELAYER_POLL_INTERVAL": "0.05",
        }
        | extra
    )


async def test_kill_9_mid_backfill_then_restart_publishes_every_event_once(
    db: str, node: Anvil, log_dir: Path
) -> None:
    chain = EscrowChain(node)
    escrows = []
    for _ in range(20):
        escrow = chain.create()
        chain.act(escrow, "approve", 0)
        escrows.append(escrow)
        chain.mine(3)
    chain.mine(3)
    logs = 40
    target = chain.head() - 2
    env = relayer_env(chain, SETTLEMENT_MAX_BLOCK_RANGE="2")
    proc = ServiceProcess.for_service("settlement", db, log_dir, extra_env=env)
    proc.start()
    checkpoint = "SELECT coalesce(max(block_number), -1) FROM relayer_checkpoints"
    try:
        await wait_for(
            lambda: _between(db, checkpoint, chain.deploy_block + 15, target - 15), 60, 0.02
        )
        proc.kill9()
        stopped_at = await fetchval(db, checkpoint)
        assert chain.deploy_block < stopped_at < target  # really mid-backfill
        published = await count_rows(db, "relayer_logs")
        assert published < logs
        assert await count_rows(db, "outbox", "topic = 'settlement.events.v1'") == published
        proc.start()
        proc.wait_ready(60)
        await wait_for(lambda: _count_is(db, "chain_events", logs), 60)
        await wait_for(lambda: _count_is(db, "escrows", 20, "status = 'created'"), 60)
        ready = httpx.get(f"{proc.base_url}/health/ready", timeout=10).json()
        metrics = httpx.get(f"{proc.base_url}/metrics", timeout=10).text
    finally:
        proc.terminate()
    # exactly once: one outbox row, one relayer_logs row, one chain event per log
    assert await count_rows(db, "outbox", "topic = 'settlement.events.v1'") == logs
    assert await count_rows(db, "relayer_logs") == logs
    assert await count_rows(db, "chain_events") == logs
    assert await count_rows(db, "escrow_approvals") == 20
    assert await count_rows(db, "inbox", "subscription = 'settlement-events-consumer'") == logs
    assert await count_rows(db, "escrow_anomalies") == 0
    (relayer,) = ready["relayer"]
    assert relayer["chain_id"] == CHAIN_ID
    assert relayer["checkpoint_block"] >= target
    assert relayer["lag_blocks"] == relayer["head_block"] - relayer["checkpoint_block"] >= 2
    assert relayer["lag_seconds"] is not None
    for gauge in ("head_block", "checkpoint_block", "lag_blocks", "lag_seconds"):
        assert f'fp_settlement_relayer_{gauge}{{chain_id="{CHAIN_ID}"}}' in metrics


async def test_settlement_relay_alone_beside_the_service(
    db: str, node: Anvil, log_dir: Path
) -> None:
    chain = EscrowChain(node)
    escrow = chain.create()
    chain.act(escrow, "approve", 0)
    chain.mine(3)
    bus = create_bus_database_sync(db)
    args = [sys.executable, "-m", "fusion_prime.cli", "settlement", "relay"]
    # without ETH_RPC_URL there is nothing to relay: a clear refusal
    service = ServiceProcess.for_service(
        "settlement", db, log_dir, extra_env=FAST | {"FP_BUS_URL": bus}
    )
    refused = ServiceProcess(args, service.env, 0, log_dir / "refused.log").start()
    assert refused.wait_exit(60) == 2
    assert "ETH_RPC_URL is not set" in refused.log_text()
    relay = ServiceProcess(args, service.env | relayer_env(chain), 0, log_dir / "relay.log")
    relay.start()
    try:
        with running(service):
            await wait_for(lambda: _count_is(db, "chain_events", 2), 60)
            assert await fetchval(db, "SELECT status FROM escrows") == "created"
            assert await count_rows(db, "escrow_approvals") == 1
    finally:
        relay.terminate()


async def _between(db: str, sql: str, low: int, high: int) -> bool:
    value = await fetchval(db, sql)
    if value >= high:
        raise AssertionError(f"backfill finished ({value}) before the kill: slow it down")
    return bool(value > low)


async def _count_is(db: str, table: str, n: int, where: str = "TRUE") -> bool:
    return await count_rows(db, table, where) == n
