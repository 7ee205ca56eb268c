"""`/bus/...` on the services: each shows and replays the queues it operates, read through
its own broker pool (the console's only way to the bus), checked on the bus tables."""

from __future__ import annotations

import uuid

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from fusion_prime.platform.bus.registry import TOPICS, operated_by
from fusion_prime.risk.spec import SPEC as RISK
from fusion_prime.settlement.spec import SPEC as SETTLEMENT
from tests.conftest import MakeDatabase
from tests.harness import add_key, asgi_client, auth_headers, fetch, fetchval
from tests.settlement.factory import FAST

SIGNER_TOPIC = "settlement.commands.v1"
SIGNER = "settlement-signer"


def test_every_subscription_is_operated_by_exactly_one_service() -> None:
    services = {"settlement", "compliance", "risk", "alerts", "oracle"}
    owners: dict[str, list[str]] = {}
    for service in services:
        for name in operated_by(service):
            owners.setdefault(name, []).append(service)
    every = {s.name for t in TOPICS for s in t.subscriptions}
    assert set(owners) == every
    assert all(len(v) == 1 for v in owners.values()), owners
    assert owners[SIGNER] == ["settlement"]  # external consumer: the topic's publisher
    assert owners["risk-engine-prices-consumer"] == ["risk"]


async def _dead_letter(bus_url: str) -> tuple[int, uuid.UUID]:
    """One message on the signer's queue (no process here consumes it), dead-lettered."""
    env = Envelope(type="settlement.command_submitted", source="tests", subject="c-1", data={})
    async with PostgresBroker(bus_url, pool_size=1) as broker:
        await broker.sync_registry()
        await broker.publish(
            [OutgoingEvent(env.id, SIGNER_TOPIC, env.subject, env.type, env.to_json())]
        )
        token = uuid.uuid4()
        (leased,) = await broker.lease(SIGNER, 10, 30, token)
        dead_id = await broker.dead_letter(SIGNER, leased.id, token, "signer refused: boom")
    assert dead_id is not None
    return dead_id, env.id


async def test_subscriptions_dead_letters_and_replay(
    make_database: MakeDatabase, bus_url: str
) -> None:
    settlement_db = await make_database("settlement", SETTLEMENT.migrations_dir)
    risk_db = await make_database("risk", RISK.migrations_dir)
    dead_id, event_id = await _dead_letter(bus_url)
    async with (
        asgi_client(SETTLEMENT, settlement_db, FP_BUS_URL=bus_url, **FAST) as settlement,
        asgi_client(RISK, risk_db, FP_BUS_URL=bus_url) as risk,
    ):
        subs = (await settlement.get("/bus/subscriptions")).json()
        by_name = {s["subscription"]: s for s in subs["items"]}
        assert set(by_name) == set(operated_by("settlement"))
        signer = by_name[SIGNER]
        assert (signer["depth"], signer["dead_letters"], signer["topic"]) == (0, 1, SIGNER_TOPIC)
        risk_subs = (await risk.get("/bus/subscriptions")).json()["items"]
        assert {s["subscription"] for s in risk_subs} == set(operated_by("risk"))

        letters = (await settlement.get("/bus/dead-letters")).json()["items"]
        assert [(d["id"], d["event_id"], d["error"]) for d in letters] == [
            (dead_id, str(event_id), "signer refused: boom")
        ]
        assert (await risk.get("/bus/dead-letters")).json()["items"] == []
        # risk does not operate the signer's queue: neither listed nor replayed there
        assert (await risk.post(f"/bus/dead-letters/{dead_id}/replay")).status_code == 404
        assert (
            await risk.get("/bus/dead-letters", params={"subscription": SIGNER})
        ).status_code == 404

        # reading is for every role; replaying needs operator (or admin)
        viewer = auth_headers(await add_key(settlement_db, "viewer"))
        assert (await settlement.get("/bus/dead-letters", headers=viewer)).status_code == 200
        refused = await settlement.post(f"/bus/dead-letters/{dead_id}/replay", headers=viewer)
        assert refused.status_code == 403
        assert (
            await fetchval(
                bus_url, "SELECT replayed_at FROM bus_dead_letters WHERE id = $1", dead_id
            )
            is None
        )
        operator_key = await add_key(settlement_db, "operator")
        operator_id = operator_key.split("_")[1]
        operator = auth_headers(operator_key)
        replayed = await settlement.post(f"/bus/dead-letters/{dead_id}/replay", headers=operator)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["replayed_at"] is not None
        # the replay is recorded as the operator key's identity, not as anything the client says
        assert replayed.json()["replayed_by"].endswith(f"[{operator_id}]")
        again = await settlement.post(f"/bus/dead-letters/{dead_id}/replay")
        assert again.status_code == 409
        assert "already replayed" in again.json()["detail"]
        missing = await settlement.post("/bus/dead-letters/999999/replay")
        assert missing.status_code == 404
        huge = await settlement.post(f"/bus/dead-letters/{2**64}/replay")
        assert huge.status_code == 422

        after = {
            s["subscription"]: s
            for s in (await settlement.get("/bus/subscriptions")).json()["items"]
        }
        assert (after[SIGNER]["depth"], after[SIGNER]["dead_letters"]) == (1, 0)
        assert after[SIGNER]["oldest_age_seconds"] is not None
    row = await fetch(
        bus_url, "SELECT replayed_at, replayed_by FROM bus_dead_letters WHERE id = $1", dead_id
    )
    assert row[0]["replayed_at"] is not None
    assert row[0]["replayed_by"].endswith(f"[{operator_id}]")
    queued = await fetchval(
        bus_url,
        "SELECT count(*) FROM bus_messages WHERE subscription = $1 AND acked_at IS NULL "
        "AND attempts = 0",
        SIGNER,
    )
    assert queued == 1


async def test_no_bus_routes_in_a_process_without_the_bus(make_database: MakeDatabase) -> None:
    db = await make_database("risk", RISK.migrations_dir)
    async with asgi_client(RISK, db) as risk:
        assert (await risk.get("/bus/subscriptions")).status_code == 404
        assert (await risk.post("/bus/dead-letters/1/replay")).status_code == 404
