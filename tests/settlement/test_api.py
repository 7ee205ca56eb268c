"""The HTTP API on the real app (lifespan and background loops running), checked on tables."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import asgi_client, count_rows, fetch, fetchval
from tests.settlement.factory import (
    FAST,
    SPEC,
    USDC,
    Escrow,
    deliver,
    new_address,
    wait_for,
)


def create_body(e: Escrow, **overrides: Any) -> dict[str, Any]:
    return {
        "action": "create_escrow",
        "chain_id": 1,
        "payer": e.payer,
        "payee": e.payee,
        "arbiter": e.arbiter,
        "asset": "USDC",
        "amount": "1000000",
        "approvals_required": 2,
        "release_delay": 3600,
        "reference": "invoice-42",
    } | overrides


async def _status(client: httpx.AsyncClient, command_id: str, wanted: str) -> bool:
    return bool((await client.get(f"/commands/{command_id}")).json()["status"] == wanted)


async def test_command_lifecycle_and_idempotency(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    async with asgi_client(SPEC, db, **FAST) as client:
        body = create_body(e, payer=e.payer.upper().replace("0X", "0x"))
        first = await client.post("/commands", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 201, first.text
        command = first.json()
        assert command["status"] == "received"
        assert command["payer"] == e.payer  # normalised
        assert command["asset_address"] == USDC
        assert command["asset_decimals"] == 6
        assert command["amount"] == "1000000"

        again = await client.post("/commands", json=body, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == command["id"]
        other = await client.post(
            "/commands", json=body | {"amount": "5"}, headers={"Idempotency-Key": "k-1"}
        )
        assert other.status_code == 409
        assert other.headers["content-type"] == "application/problem+json"
        assert await count_rows(db, "commands") == 1

        row = (await fetch(db, "SELECT * FROM commands"))[0]
        assert row["idempotency_key"] == "k-1"
        assert row["reference"] == "invoice-42"
        assert row["release_delay"] == 3600
        assert row["approvals_required"] == 2
        assert row["body"]  # the whole request as given, normalised

        # the submitter hands it to the signer through the outbox
        await wait_for(lambda: _status(client, command["id"], "submitted"))
        outbox = await fetch(
            db, "SELECT envelope FROM outbox WHERE topic = 'settlement.commands.v1'"
        )
        assert len(outbox) == 1
        assert await fetchval(db, "SELECT outbox_event_id FROM commands") is not None

        # the deployment on chain carrying the command's correlation id confirms it
        await deliver(engine, [e.deployed(required=2, correlation_id=command["id"])])
        got = (await client.get(f"/commands/{command['id']}")).json()
        assert got["status"] == "confirmed"
        assert got["escrow_address"] == e.address

        # an approval command is confirmed by the matching approval event
        approve = await client.post(
            "/commands",
            json={"action": "approve", "escrow_address": e.address, "approver": e.payee},
            headers={"Idempotency-Key": "k-2"},
        )
        assert approve.status_code == 201, approve.text
        release = await client.post(  # (an approval the arbiter never gives)
            "/commands",
            json={"action": "approve", "escrow_address": e.address, "approver": e.arbiter},
            headers={"Idempotency-Key": "k-3"},
        )
        await deliver(engine, [e.approved(e.payee)])
        assert (await client.get(f"/commands/{approve.json()['id']}")).json()[
            "status"
        ] == "confirmed"
        # refunded instead: the pending release can no longer happen
        await deliver(engine, [e.refunded()])
        failed = (await client.get(f"/commands/{release.json()['id']}")).json()
        assert failed["status"] == "failed"
        assert "refunded" in failed["failure_reason"]


async def test_bad_commands_are_422_naming_fields_and_write_nothing(db: str) -> None:
    e = Escrow()
    async with asgi_client(SPEC, db, **FAST) as client:
        missing = await client.post("/commands", json=create_body(e))
        assert missing.status_code == 422
        assert "Idempotency-Key" in [x["field"] for x in missing.json()["errors"]]

        cases = [
            ({"payer": "0x12"}, "payer"),
            ({"amount": "-1"}, "amount"),
            ({"amount": 1.5}, "amount"),
            ({"amount": "1.5"}, "amount"),
            ({"approvals_required": 4}, "approvals_required"),
            ({"approvals_required": 0}, "approvals_required"),
            ({"asset": "DOGE"}, "asset"),
            ({"chain_id": 0}, "chain_id"),
            ({"surprise": 1}, "surprise"),
        ]
        for i, (change, field) in enumerate(cases):
            r = await client.post(
                "/commands", json=create_body(e, **change), headers={"Idempotency-Key": f"b{i}"}
            )
            assert r.status_code == 422, (change, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            fields = [x["field"] for x in r.json()["errors"]]
            assert any(f.endswith(field) for f in fields), (change, fields)

        unknown = await client.post(
            "/commands",
            json={"action": "release", "escrow_address": new_address()},
            headers={"Idempotency-Key": "u"},
        )
        assert unknown.status_code == 404
        assert (
            await client.get("/commands/5b0f2f8e-0000-4000-8000-000000000000")
        ).status_code == 404
        assert (await client.get("/commands/not-a-uuid")).status_code == 422
        assert await count_rows(db, "commands") == 0
        assert await count_rows(db, "outbox") == 0


async def test_approve_command_requires_a_party(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed()])
    async with asgi_client(SPEC, db, **FAST) as client:
        r = await client.post(
            "/commands",
            json={"action": "approve", "escrow_address": e.address, "approver": new_address()},
            headers={"Idempotency-Key": "a"},
        )
        assert r.status_code == 422
        assert [x["field"] for x in r.json()["errors"]] == ["approver"]
    assert await count_rows(db, "commands") == 0


async def test_escrow_queries(db: str, engine: AsyncEngine) -> None:
    payer = new_address()
    escrows = [Escrow(payer=payer) for _ in range(5)] + [Escrow() for _ in range(2)]
    await deliver(engine, [x.deployed() for x in escrows])
    await deliver(engine, [escrows[0].refunded(), escrows[1].approved(new_address())])
    async with asgi_client(SPEC, db, **FAST) as client:
        one = await client.get(f"/escrows/{escrows[0].address.upper().replace('0X', '0x')}")
        assert one.status_code == 200
        body = one.json()
        assert body["status"] == "refunded"
        assert body["amount"] == "1000000"
        assert body["amount_display"] == "1.000000"
        assert body["asset_symbol"] == "USDC"
        assert (await client.get(f"/escrows/{new_address()}")).status_code == 404
        bad = await client.get("/escrows/0xnope")
        assert bad.status_code == 422
        assert [x["field"] for x in bad.json()["errors"]] == ["address"]

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"payer": payer, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/escrows", params=params)).json()
            seen += [x["address"] for x in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == [x.address for x in escrows[:5]]
        everything = (await client.get("/escrows", params={"limit": 200})).json()
        assert len(everything["items"]) == 7
        assert everything["next_cursor"] is None
        refunded = (await client.get("/escrows", params={"status": "refunded"})).json()
        assert [x["address"] for x in refunded["items"]] == [escrows[0].address]
        assert (await client.get("/escrows", params={"chain_id": 5})).json()["items"] == []
        for params in ({"status": "lost"}, {"cursor": "garbage!"}, {"payee": "x"}, {"limit": 0}):
            r = await client.get("/escrows", params=params)
            assert r.status_code == 422, params
            assert [x["field"] for x in r.json()["errors"]] == [next(iter(params))]

        history = (await client.get(f"/escrows/{escrows[0].address}/history")).json()
        assert [h["to_status"] for h in history["items"]] == ["created", "refunded"]
        assert history["items"][0]["tx_hash"].startswith("0x")
        assert history["items"][0]["details"]["payer"] == payer
        assert history["items"][0]["details"]["amount"] == "1000000"
        anomalies = (await client.get(f"/escrows/{escrows[1].address}/anomalies")).json()
        assert [a["reason"] for a in anomalies["items"]] == ["approver_not_allowed"]
        assert (await client.get(f"/escrows/{new_address()}/history")).status_code == 404


async def test_assets_are_managed(db: str) -> None:
    async with asgi_client(SPEC, db, **FAST) as client:
        symbols = {a["symbol"] for a in (await client.get("/assets")).json()["items"]}
        assert {"USDC", "USDT", "DAI", "WETH"} <= symbols
        asset = {"chain_id": 10, "address": new_address(), "symbol": "OPX", "decimals": 18}
        assert (await client.post("/assets", json=asset)).status_code == 201
        assert (await client.post("/assets", json=asset)).status_code == 409
        bad = await client.post("/assets", json=asset | {"decimals": 99, "address": "0x1"})
        assert bad.status_code == 422
        assert sorted(x["field"] for x in bad.json()["errors"]) == ["address", "decimals"]
    assert await count_rows(db, "assets", "symbol = 'OPX'") == 1


async def test_unconfirmed_command_fails_after_timeout(db: str, engine: AsyncEngine) -> None:
    e = Escrow()
    await deliver(engine, [e.deployed()])
    async with asgi_client(SPEC, db, **FAST, SETTLEMENT_COMMAND_TIMEOUT="0.3") as client:
        r = await client.post(
            "/commands",
            json={"action": "refund", "escrow_address": e.address},
            headers={"Idempotency-Key": "t"},
        )
        await wait_for(lambda: _status(client, r.json()["id"], "failed"))
    row = (await fetch(db, "SELECT * FROM commands"))[0]
    assert row["submitted_at"] is not None
    assert "no matching chain event" in row["failure_reason"]


async def test_fast_read_path_matches_the_orm_path(db: str, engine: AsyncEngine) -> None:
    import asyncpg
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from fusion_prime.platform.admin import asyncpg_dsn
    from fusion_prime.settlement import repository

    e = Escrow()
    await deliver(engine, [e.deployed(), e.approved(e.payer), e.approved(e.arbiter)])
    pool = await asyncpg.create_pool(asyncpg_dsn(db), min_size=1, max_size=1)
    try:
        fast = await repository.get_escrow_fast(pool, e.address)
        assert await repository.get_escrow_fast(pool, new_address()) is None
    finally:
        await pool.close()
    async with async_sessionmaker(engine)() as session:
        slow = await repository.get_escrow(session, e.address)
    assert fast == slow
    assert fast is not None
    assert [a["approver"] for a in fast["approvals"]] == [e.payer, e.arbiter]


async def test_command_stored_while_its_escrow_closed_fails_at_submission(
    db: str, engine: AsyncEngine
) -> None:
    """The race ingestion cannot see: a command still uncommitted while the refund is
    ingested. submit_received must fail it (escrow closed), not hand it to the signer."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from fusion_prime.settlement import service

    e = Escrow()
    create = Escrow()
    await deliver(engine, [e.deployed()])
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        release, _ = await service.create_command(
            session,
            "late",
            {"action": "approve", "escrow_address": e.address, "approver": e.payee},
            requested_by="tests",
        )
        await deliver(engine, [e.refunded()])  # commits first, misses the uncommitted command
    async with sessions() as session, session.begin():
        await service.create_command(session, "new", create_body(create), requested_by="tests")
    assert await fetchval(db, "SELECT status FROM commands WHERE id = $1", release["id"]) == (
        "received"
    )
    async with sessions() as session, session.begin():
        assert await service.submit_received(session) == 1
    rows = {r["idempotency_key"]: r for r in await fetch(db, "SELECT * FROM commands")}
    assert rows["late"]["status"] == "failed"
    assert rows["late"]["failure_reason"] == "escrow is refunded on chain"
    assert rows["late"]["outbox_event_id"] is None
    assert rows["new"]["status"] == "submitted"
    assert await count_rows(db, "outbox", "event_type = 'settlement.command_submitted'") == 1
