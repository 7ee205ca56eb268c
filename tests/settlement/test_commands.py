"""Settlement commands and the external signer (issue 17, point 1), on the real tables.

The signer is outside this system: the registry declares its subscription
(`settlement-signer`) so the brokers keep the commands for it, and nothing here consumes
it. A command carries a correlation id (its id) that the signer echoes and the chain
event carries; only that id confirms a `create_escrow`, never the terms alone.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from fusion_prime.ops.deploy_gen import known_services, tfvars
from fusion_prime.platform.bus import registry
from fusion_prime.platform.bus.postgres import migrate_bus
from fusion_prime.platform.bus.wiring import consumers_for
from fusion_prime.settlement import service
from tests.harness import asgi_client, count_rows, fetch, fetchval
from tests.settlement.factory import FAST, SPEC, Escrow, deliver, wait_for
from tests.settlement.test_api import create_body

COMMANDS = "settlement.commands.v1"
SIGNER = "settlement-signer"


def test_the_signer_subscription_is_declared_for_an_external_consumer() -> None:
    topic = registry.topic(COMMANDS)
    assert [s.name for s in topic.subscriptions] == [SIGNER]
    (sub,) = topic.subscriptions
    assert sub.external
    assert sub.handler is None  # nothing in this codebase pretends to be the signer
    assert SIGNER not in {c.subscription for c in consumers_for(SPEC)}
    generated = tfvars(known_services(["settlement"]))["topics"][COMMANDS]["subscriptions"]
    assert generated[SIGNER] == {
        "service": sub.service,
        "max_delivery_attempts": sub.max_attempts,
        "push_path": None,  # a pull subscription: the signer pulls, with a dead-letter topic
        "external": True,
    }
    assert "settlement.command_cancelled" in topic.event_types


async def test_events_migrate_declares_the_signer_queue_and_commands_reach_it(
    db: str, bus_url: str
) -> None:
    await migrate_bus(bus_url)
    subs = await fetch(
        bus_url, "SELECT topic, max_attempts FROM bus_subscriptions WHERE name = $1", SIGNER
    )
    assert [(r["topic"], r["max_attempts"]) for r in subs] == [(COMMANDS, 5)]
    e = Escrow()
    env = FAST | {"FP_BUS_URL": bus_url, "FP_BUS_POLL_INTERVAL": "0.05"}
    async with asgi_client(SPEC, db, **env) as client:
        r = await client.post(
            "/commands", json=create_body(e), headers={"Idempotency-Key": "signer-1"}
        )
        assert r.status_code == 201, r.text
        command_id = r.json()["id"]

        async def queued() -> list[Any]:
            return await fetch(
                bus_url,
                "SELECT event_type, envelope FROM bus_messages WHERE subscription = $1",
                SIGNER,
            )

        rows = await wait_for(queued, timeout=15)
    assert [r["event_type"] for r in rows] == ["settlement.command_submitted"]
    data = json.loads(rows[0]["envelope"])["data"]
    assert data["correlation_id"] == command_id
    assert data["action"] == "create_escrow"


async def _submit(engine: AsyncEngine, *commands: tuple[str, dict[str, Any]]) -> list[str]:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    ids = []
    async with sessions() as session, session.begin():
        for key, body in commands:
            row, _ = await service.create_command(session, key, body, requested_by="tests")
            ids.append(str(row["id"]))
    async with sessions() as session, session.begin():
        await service.submit_received(session)
    return ids


async def _status(db: str, command_id: str) -> str:
    return str(
        await fetchval(db, "SELECT status FROM commands WHERE id = $1", uuid.UUID(command_id))
    )


async def test_create_escrow_is_confirmed_by_its_correlation_id_never_by_terms(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    first, second = await _submit(engine, ("a", create_body(e)), ("b", create_body(e)))
    # an escrow with exactly the same terms, deployed by someone else: confirms nothing
    await deliver(engine, [e.deployed(required=2)])
    assert [await _status(db, first), await _status(db, second)] == ["submitted", "submitted"]
    # the signer's deployment of the second command echoes its correlation id
    mine = Escrow(payer=e.payer, payee=e.payee, arbiter=e.arbiter)
    await deliver(engine, [mine.deployed(required=2, correlation_id=second)])
    assert [await _status(db, first), await _status(db, second)] == ["submitted", "confirmed"]
    row = (await fetch(db, "SELECT * FROM commands WHERE id = $1", uuid.UUID(second)))[0]
    assert row["escrow_address"] == mine.address
    assert row["confirmed_chain_event_id"] is not None
    stored = await fetchval(
        db, "SELECT correlation_id FROM chain_events WHERE id = $1", row["confirmed_chain_event_id"]
    )
    assert str(stored) == second


async def test_a_timed_out_command_publishes_a_cancel_and_its_late_execution_is_recorded(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed(required=1)])
    (approve,) = await _submit(
        engine, ("late", {"action": "approve", "escrow_address": e.address, "approver": e.payer})
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        assert await service.expire_submitted(session, 0.0) == 1
    assert await _status(db, approve) == "failed"
    cancels = await fetch(
        db,
        "SELECT subject, envelope FROM outbox WHERE topic = $1 AND event_type = $2",
        COMMANDS,
        "settlement.command_cancelled",
    )
    assert len(cancels) == 1
    cancel = json.loads(cancels[0]["envelope"])
    assert cancel["data"]["correlation_id"] == approve
    assert cancel["data"]["action"] == "approve"
    assert cancels[0]["subject"] == e.address  # same ordering key as the submission

    # the signer had sent it after all: the approval lands on chain, late
    await deliver(engine, [e.approved(e.payer, correlation_id=approve)])
    row = (await fetch(db, "SELECT * FROM commands WHERE id = $1", uuid.UUID(approve)))[0]
    assert row["status"] == "confirmed_late"
    assert row["confirmed_chain_event_id"] is not None
    assert "no matching chain event" in row["failure_reason"]  # why it had been failed
    assert await fetchval(db, "SELECT status FROM escrows") == "approved"


async def test_a_release_is_refused_for_an_escrow_that_is_not_approved(
    db: str, engine: AsyncEngine
) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed(required=1)])
    release = {"action": "release", "escrow_address": e.address}
    async with asgi_client(SPEC, db, **FAST) as client:
        r = await client.post("/commands", json=release, headers={"Idempotency-Key": "r1"})
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "not approved" in r.json()["detail"]
        assert await count_rows(db, "commands") == 0
        await deliver(engine, [e.approved(e.payee)])
        r = await client.post("/commands", json=release, headers={"Idempotency-Key": "r2"})
        assert r.status_code == 201, r.text
    assert await count_rows(db, "commands", "action = 'release'") == 1


async def test_a_release_whose_escrow_lost_its_approval_is_not_handed_to_the_signer(
    db: str, engine: AsyncEngine
) -> None:
    from tests.settlement.factory import new_address

    e = Escrow()
    await deliver(engine, [e.deployed(required=1), e.approved(e.arbiter)])
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        await service.create_command(
            session, "rel", {"action": "release", "escrow_address": e.address}, requested_by="t"
        )
    # the arbiter is replaced before the submitter runs: its approval no longer counts
    await deliver(engine, [e.arbiter_changed(new_address())])
    async with sessions() as session, session.begin():
        assert await service.submit_received(session) == 0
    row = (await fetch(db, "SELECT status, failure_reason FROM commands"))[0]
    assert row["status"] == "failed"
    assert "not approved" in row["failure_reason"]
    assert await count_rows(db, "outbox", "topic = $1", COMMANDS) == 0
