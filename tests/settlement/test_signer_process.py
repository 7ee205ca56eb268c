"""The signer's queue with a real `fusion-prime serve settlement` process and broker.

Nothing stands in for the signer: the test reads the queue the registry declares
(`settlement-signer`, via `fusion-prime events migrate`) and plays the chain indexer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker, migrate_bus
from tests.harness import ServiceProcess, fetch, running
from tests.settlement.factory import FAST, Escrow, wait_for
from tests.settlement.test_api import create_body

SIGNER = "settlement-signer"


async def _signer_queue(bus_url: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await fetch(
        bus_url,
        "SELECT event_type, envelope FROM bus_messages WHERE subscription = $1 ORDER BY id",
        SIGNER,
    )
    return [(r["event_type"], json.loads(r["envelope"])["data"]) for r in rows]


async def test_a_command_times_out_is_cancelled_to_the_signer_then_confirmed_late(
    db: str, bus_url: str, log_dir: Path
) -> None:
    await migrate_bus(bus_url)  # what `fusion-prime events migrate` does
    env = FAST | {
        "FP_BUS_URL": bus_url,
        "FP_BUS_POLL_INTERVAL": "0.1",
        "SETTLEMENT_COMMAND_TIMEOUT": "1",
    }
    proc = ServiceProcess.for_service("settlement", db, log_dir, extra_env=env)
    e = Escrow()
    with running(proc, timeout=60):
        async with proc.async_client(timeout=10) as client:
            r = await client.post(
                "/commands", json=create_body(e), headers={"Idempotency-Key": "p-1"}
            )
            assert r.status_code == 201, r.text
            command_id = r.json()["id"]

            async def cancelled() -> list[tuple[str, dict[str, Any]]] | None:
                queue = await _signer_queue(bus_url)
                return queue if len(queue) == 2 else None

            queue = await wait_for(cancelled, timeout=30)
            assert [t for t, _ in queue] == [
                "settlement.command_submitted",
                "settlement.command_cancelled",
            ]
            assert {d["correlation_id"] for _, d in queue} == {command_id}
            failed = (await client.get(f"/commands/{command_id}")).json()
            assert failed["status"] == "failed"

            # the signer had already sent it: the deployment lands with the correlation id
            deployed = e.deployed(required=2, correlation_id=command_id)
            async with PostgresBroker(bus_url, pool_size=1) as broker:
                await broker.publish(
                    [
                        OutgoingEvent(
                            deployed.id,
                            "settlement.events.v1",
                            deployed.subject,
                            deployed.type,
                            deployed.to_json(),
                        )
                    ]
                )

            async def late() -> bool:
                got = (await client.get(f"/commands/{command_id}")).json()
                return bool(got["status"] == "confirmed_late")

            await wait_for(late, timeout=30)
            escrow = await client.get(f"/escrows/{e.address}")
            assert escrow.status_code == 200
    rows = await fetch(db, "SELECT status, escrow_address FROM commands")
    assert [(r["status"], r["escrow_address"]) for r in rows] == [("confirmed_late", e.address)]
