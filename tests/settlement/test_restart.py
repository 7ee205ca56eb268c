"""A real `fusion-prime serve settlement` process: kill -9, restart, everything still there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT, ServiceProcess, _env, count_rows, fetch, running
from tests.settlement.factory import (
    FAST,
    Escrow,
    deliver,
    engine_for,
    wait_for,
)
from tests.settlement.receiver import receiver


async def test_escrows_history_commands_deliveries_survive_kill_9(db: str, log_dir: Path) -> None:
    e = Escrow()
    proc = ServiceProcess.for_service("settlement", db, log_dir, extra_env=FAST)
    with receiver() as rx, running(proc):
        async with proc.async_client(timeout=10) as client:
            hook = (
                await client.post(
                    "/webhooks", json={"url": rx.url, "event_types": ["escrow.created"]}
                )
            ).json()
            rx.secret = hook["secret"]
            command = (
                await client.post(
                    "/commands",
                    json={
                        "action": "create_escrow",
                        "chain_id": 1,
                        "payer": e.payer,
                        "payee": e.payee,
                        "arbiter": e.arbiter,
                        "asset": "USDC",
                        "amount": "1000000",
                        "approvals_required": 2,
                        "release_delay": 3600,
                    },
                    headers={"Idempotency-Key": "restart-1"},
                )
            ).json()
            async with engine_for(db) as engine:
                deployed = e.deployed(correlation_id=command["id"])  # the signer's transaction
                await deliver(engine, [deployed, e.approved(e.payer)])

            async def delivered() -> bool:
                return len(rx.verified_bodies()) == 1

            await wait_for(delivered)
            before = {
                "escrow": (await client.get(f"/escrows/{e.address}")).json(),
                "history": (await client.get(f"/escrows/{e.address}/history")).json(),
                "command": (await client.get(f"/commands/{command['id']}")).json(),
                "deliveries": (await client.get(f"/webhooks/{hook['id']}/deliveries")).json(),
            }
            assert before["command"]["status"] == "confirmed"
            assert before["deliveries"]["items"][0]["status"] == "succeeded"

        proc.kill9()
        assert proc.process is not None
        assert proc.process.returncode == -9
        proc.start()
        proc.wait_ready()
        async with proc.async_client(timeout=10) as client:
            after = {
                "escrow": (await client.get(f"/escrows/{e.address}")).json(),
                "history": (await client.get(f"/escrows/{e.address}/history")).json(),
                "command": (await client.get(f"/commands/{command['id']}")).json(),
                "deliveries": (await client.get(f"/webhooks/{hook['id']}/deliveries")).json(),
            }
            assert after == before
            replay = await client.post(
                "/commands",
                json={"action": "approve", "escrow_address": e.address, "approver": e.payee},
                headers={"Idempotency-Key": "restart-1"},
            )
            assert replay.status_code == 409  # the key is remembered across the restart
    assert await count_rows(db, "escrows") == 1
    assert await count_rows(db, "escrow_history") == 2
    assert [r["status"] for r in await fetch(db, "SELECT status FROM commands")] == ["confirmed"]
    assert "Using database URL: postgresql+asyncpg://" in proc.log_text()


def test_refuses_to_start_without_the_webhook_key(db: str) -> None:
    env = _env(db, None)
    env.pop("SETTLEMENT_WEBHOOK_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "serve", "settlement", "--port", "1"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
