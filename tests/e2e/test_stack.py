"""End to end through the real stack: chain events, prices, compliance decisions, verify.

The services run as `fusion-prime serve` processes sharing one postgres-broker database;
events enter the way operators and upstream systems put them there (the `events publish`
command, the broker), and every assertion reads the services' and the bus's tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from tests.e2e.conftest import (
    DECISIONS_OBSERVER,
    ESCROWS_OBSERVER,
    SIGNER,
    Stack,
    cli,
    drained,
    publish_file,
    write_jsonl,
)
from tests.harness import count_rows, fetch, fetchval
from tests.settlement.factory import Escrow, redeliver, wait_for

CHAIN = "settlement.events.v1"
SETTLEMENT_SUB = "settlement-events-consumer"
RISK_SUB = "risk-events-consumer"
PRICES = "market.prices.v1"
PRICES_SUB = "risk-engine-prices-consumer"
ALERTS_SUB = "alert-notification-service"


async def test_chain_events_fan_out_to_settlement_and_risk_exactly_once(
    stack: Stack, tmp_path: Path
) -> None:
    a, b, c = Escrow(), Escrow(), Escrow()
    a_deployed, a_approved = a.deployed(required=2, amount=5_000_000), a.approved(a.payer)
    a_rest = [a.approved(a.payee), a.released()]
    b_events = [b.deployed(required=1, amount=7_000_000), b.refunded()]
    b_late = b.approved(b.payee)  # after the refund: an anomaly, never applied
    c_deployed = c.deployed(required=2, amount=9_000_000)
    c_approved = c.approved(c.payer)
    stream = [
        a_deployed,
        a_approved,
        c_approved,  # out of order: C's approval before its deployment
        *b_events,
        redeliver(a_approved, new_id=True),  # the indexer re-emits a log in a new envelope
        *a_rest,
        c_deployed,
        b_late,
    ]
    await publish_file(stack.bus, CHAIN, write_jsonl(tmp_path / "chain.jsonl", stream))
    # both subscriptions got every envelope, once
    for sub in (SETTLEMENT_SUB, RISK_SUB):
        assert await count_rows(stack.bus, "bus_messages", "subscription = $1", sub) == 10
    await wait_for(lambda: drained(stack.bus, SETTLEMENT_SUB), timeout=30)
    await wait_for(lambda: drained(stack.bus, RISK_SUB), timeout=30)

    sdb = stack.db["settlement"]
    escrows = {
        r["address"]: (r["status"], r["approvals_count"], r["amount"])
        for r in await fetch(sdb, "SELECT address, status, approvals_count, amount FROM escrows")
    }
    assert escrows == {
        a.address: ("released", 2, 5_000_000),
        b.address: ("refunded", 0, 7_000_000),
        c.address: ("created", 1, 9_000_000),
    }
    history = await fetch(
        sdb,
        "SELECT escrow_address, event_type, from_status, to_status FROM escrow_history ORDER BY id",
    )
    per_escrow: dict[str, list[tuple[str, str | None, str]]] = {}
    for h in history:
        per_escrow.setdefault(h["escrow_address"], []).append(
            (h["event_type"], h["from_status"], h["to_status"])
        )
    assert per_escrow == {
        a.address: [
            ("escrow.deployed", None, "created"),
            ("escrow.approved", "created", "created"),
            ("escrow.approved", "created", "approved"),
            ("escrow.released", "approved", "released"),
        ],
        b.address: [
            ("escrow.deployed", None, "created"),
            ("escrow.refunded", "created", "refunded"),
        ],
        c.address: [
            ("escrow.deployed", None, "created"),
            ("escrow.approved", "created", "created"),
        ],
    }
    anomalies = await fetch(
        sdb, "SELECT escrow_address, event_type, status_at_event, tx_hash FROM escrow_anomalies"
    )
    assert [(r["escrow_address"], r["event_type"], r["status_at_event"]) for r in anomalies] == [
        (b.address, "escrow.approved", "refunded")
    ]
    assert anomalies[0]["tx_hash"] == b_late.data["tx_hash"]
    assert await count_rows(sdb, "chain_events") == 9  # the re-emitted log is stored once
    assert await count_rows(sdb, "parked_events") == 0
    assert await count_rows(sdb, "inbox", "subscription = $1", SETTLEMENT_SUB) == 10

    # settlement's state changes went through its outbox and relay into the broker
    changes = [
        (a.address, "created"), (a.address, "approved"), (a.address, "released"),
        (b.address, "created"), (b.address, "refunded"), (c.address, "created"),
    ]  # fmt: skip

    async def relayed() -> bool:
        n = await count_rows(stack.bus, "bus_messages", "subscription = $1", ESCROWS_OBSERVER)
        return n >= len(changes)

    await wait_for(relayed, timeout=30)
    assert await count_rows(sdb, "outbox", "published_at IS NULL") == 0
    outbox_ids = {r["id"] for r in await fetch(sdb, "SELECT id FROM outbox")}
    bus_rows = await fetch(
        stack.bus,
        "SELECT event_id, topic, subject, event_type, envelope FROM bus_messages "
        "WHERE subscription = $1 ORDER BY id",
        ESCROWS_OBSERVER,
    )
    assert {r["event_id"] for r in bus_rows} == outbox_ids
    assert {r["topic"] for r in bus_rows} == {"settlement.escrows.v1"}
    assert {r["event_type"] for r in bus_rows} == {"escrow.state_changed"}
    got = [(r["subject"], json.loads(r["envelope"])["data"]["to_status"]) for r in bus_rows]
    assert sorted(got) == sorted(changes)
    for address in (a.address, b.address):  # per-subject order kept through the relay
        assert [s for subj, s in got if subj == address] == [
            s for subj, s in changes if subj == address
        ]

    # risk recorded each party's exposure from the same stream
    rdb = stack.db["risk"]
    assert await count_rows(rdb, "inbox", "subscription = $1", RISK_SUB) == 10
    risk_escrows = {
        r["address"]: (r["status"], r["amount"], r["payer"], r["payee"])
        for r in await fetch(rdb, "SELECT address, status, amount, payer, payee FROM escrows")
    }
    assert risk_escrows[c.address] == ("approved", 9_000_000, c.payer, c.payee)
    assert risk_escrows[a.address][:2] == ("released", 5_000_000)
    # the approval after the refund changes nothing in risk either: exposure stays closed
    assert risk_escrows[b.address][:2] == ("refunded", 7_000_000)
    async with stack.procs["risk"].async_client(timeout=10) as client:
        payer = (await client.get(f"/accounts/{c.payer}")).json()["escrow_exposure"]
        payee = (await client.get(f"/accounts/{c.payee}")).json()["escrow_exposure"]
        closed = [await client.get(f"/accounts/{x.payer}") for x in (a, b)]
    usdc = c_deployed.data["asset"]
    assert payer == {
        "locked": [{"asset": usdc, "amount": "9000000", "decimals": 6, "escrows": 1}],
        "pending": [],
    }
    assert payee == {
        "locked": [],
        "pending": [{"asset": usdc, "amount": "9000000", "decimals": 6, "escrows": 1}],
    }
    # released / refunded escrows: no open exposure (and no positions): unknown accounts
    assert [r.status_code for r in closed] == [404, 404]


def price(asset: str, value: str, at: datetime) -> Envelope:
    data = {"asset": asset, "price": value, "source": "chainlink", "source_time": at.isoformat()}
    return Envelope(type="price.updated", source="oracle", subject=asset, data=data)


async def publish_prices(bus_url: str, *envelopes: Envelope) -> None:
    """What the oracle's relay does: hand envelopes to the broker."""
    async with PostgresBroker(bus_url, pool_size=1) as broker:
        await broker.publish(
            [OutgoingEvent(e.id, PRICES, e.subject, e.type, e.to_json()) for e in envelopes]
        )


async def consumed(db: str, subscription: str, envelope: Envelope) -> bool:
    return bool(
        await count_rows(
            db, "inbox", "subscription = $1 AND event_id = $2", subscription, envelope.id
        )
    )


async def test_price_ticks_move_an_account_across_tiers_and_alert_on_the_bus(
    stack: Stack,
) -> None:
    rdb, account = stack.db["risk"], f"acct-{uuid.uuid4().hex[:8]}"
    base = datetime.now(UTC) - timedelta(seconds=30)
    async with stack.procs["risk"].async_client(timeout=10) as client:
        for asset, lt, decimals in (("ETH", "0.80", 18), ("USDC", "0.85", 6)):
            r = await client.put(
                f"/risk-parameters/{asset}",
                json={"ltv": "0.75", "liquidation_threshold": lt, "liquidation_bonus": "0.05",
                      "decimals": decimals, "max_price_age_seconds": 3600},
            )  # fmt: skip
            assert r.status_code == 201, r.text
        first = [price("ETH", "3500", base), price("USDC", "1", base)]
        await publish_prices(stack.bus, *first)
        await wait_for(lambda: consumed(rdb, PRICES_SUB, first[0]), timeout=30)
        r = await client.put(
            f"/accounts/{account}/positions",
            json={"positions": [
                {"asset": "ETH", "collateral": str(10**18), "debt": "0", "decimals": 18},
                {"asset": "USDC", "collateral": "0", "debt": str(2000 * 10**6), "decimals": 6},
            ]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["health"]["status"] == "healthy"  # 3500 x 0.8 / 2000 = 1.4

        # 2600 x 0.8 / 2000 = 1.04 -> margin_call; then 2400 -> 0.96 -> liquidation
        steps = [("2600", "margin_call"), ("2400", "liquidation")]
        last = first[0]
        for i, (value, tier) in enumerate(steps, start=1):
            last = price("ETH", value, base + timedelta(seconds=i))
            await publish_prices(stack.bus, last)
            await wait_for(lambda e=last: consumed(rdb, PRICES_SUB, e), timeout=30)
            health = (await client.get(f"/accounts/{account}/health")).json()
            assert health["status"] == tier, health

    events = await fetch(
        rdb,
        "SELECT id, event_type, from_tier, to_tier, prices FROM margin_events "
        "WHERE account_id = $1 ORDER BY created_at",
        account,
    )
    assert [(e["event_type"], e["from_tier"], e["to_tier"]) for e in events] == [
        ("margin.tier_changed", "healthy", "margin_call"),
        ("margin.tier_changed", "margin_call", "liquidation"),
    ]
    assert Decimal(json.loads(events[1]["prices"])["ETH"]) == Decimal(2400)
    snapshots = await fetch(
        rdb, "SELECT reason, status FROM health_snapshots WHERE account_id = $1 ORDER BY id",
        account,
    )  # fmt: skip
    assert [tuple(s) for s in snapshots][-2:] == [
        ("tier_change", "margin_call"), ("tier_change", "liquidation"),
    ]  # fmt: skip

    # published through risk's outbox onto alerts.margin.v1: the alerts service's queue
    # holds them although that service is not running
    async def alerted() -> int:
        return await count_rows(
            stack.bus, "bus_messages", "subscription = $1 AND subject = $2", ALERTS_SUB, account
        )

    await wait_for(lambda: _at_least(alerted, 2), timeout=30)
    queued = await fetch(
        stack.bus,
        "SELECT event_id, topic, event_type, envelope, acked_at FROM bus_messages "
        "WHERE subscription = $1 AND subject = $2 ORDER BY id",
        ALERTS_SUB,
        account,
    )
    assert [q["event_id"] for q in queued] == [e["id"] for e in events]
    assert {q["topic"] for q in queued} == {"alerts.margin.v1"}
    assert [json.loads(q["envelope"])["data"]["to_tier"] for q in queued] == [
        "margin_call",
        "liquidation",
    ]
    assert all(q["acked_at"] is None for q in queued)  # waiting for the alerts service

    # the oracle sends the last price again (same id, then a new envelope): nothing changes
    before = await _risk_counts(rdb, account)
    await publish_prices(stack.bus, last)
    again = Envelope(type=last.type, source=last.source, subject=last.subject, data=last.data)
    await publish_prices(stack.bus, again)
    await wait_for(lambda: consumed(rdb, PRICES_SUB, again), timeout=30)
    assert await _risk_counts(rdb, account) == before
    assert await alerted() == 2
    # an older tick arriving late (higher price, earlier source time) is ignored too
    await publish_prices(stack.bus, late := price("ETH", "5000", base))
    await wait_for(lambda: consumed(rdb, PRICES_SUB, late), timeout=30)
    assert await _risk_counts(rdb, account) == before
    assert await fetchval(rdb, "SELECT event_id FROM prices WHERE asset = 'ETH'") == last.id
    state = await fetch(
        rdb, "SELECT status, known_tier FROM account_state WHERE account_id = $1", account
    )
    assert [tuple(r) for r in state] == [("liquidation", "liquidation")]


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def _risk_counts(db: str, account: str) -> tuple[int, ...]:
    return (
        await count_rows(db, "margin_events", "account_id = $1", account),
        await count_rows(db, "health_snapshots", "account_id = $1", account),
        await count_rows(db, "outbox"),
        await count_rows(db, "prices"),
    )


async def test_compliance_decisions_reach_the_bus(stack: Stack) -> None:
    cdb, user = stack.db["compliance"], f"user-{uuid.uuid4().hex[:8]}"
    async with stack.procs["compliance"].async_client(timeout=10) as client:
        r = await client.post(
            "/kyc/cases",
            json={"user_id": user, "documents": [
                {"kind": "passport", "reference": "s3://kyc/e2e/passport.jpg"}]},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/kyc/cases/{r.json()['id']}/transitions",
            json={"to_status": "in_review", "reason": "docs in"},
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/aml/screen",
            json={"user_id": user, "transaction_id": "tx-e2e-1", "amount": "12000.00",
                  "currency": "USD", "type": "deposit",
                  "occurred_at": datetime.now(UTC).isoformat()},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        screening = r.json()
        assert screening["level"] == "medium"  # single_threshold (50): opens a case
        r = await client.post(
            f"/cases/{screening['case_id']}/resolve",
            json={"resolution": "cleared", "reason": "salary"},
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/sanctions/screen", json={"user_id": user, "names": ["Jane Example Doe"]}
        )
        assert r.status_code == 200, r.text

    expected = [("kyc.status_changed", "pending"), ("kyc.status_changed", "in_review"),
                ("aml.screened", None), ("case.resolved", None),
                ("sanctions.screened", None)]  # fmt: skip

    async def relayed() -> bool:
        n = await count_rows(
            stack.bus, "bus_messages", "subscription = $1 AND subject = $2",
            DECISIONS_OBSERVER, user,
        )  # fmt: skip
        return n >= len(expected)

    await wait_for(relayed, timeout=30)
    rows = await fetch(
        stack.bus,
        "SELECT event_id, topic, event_type, envelope FROM bus_messages "
        "WHERE subscription = $1 AND subject = $2 ORDER BY id",
        DECISIONS_OBSERVER,
        user,
    )
    envelopes = [json.loads(r["envelope"]) for r in rows]
    assert [(e["type"], e["data"].get("to_status")) for e in envelopes] == expected
    assert {r["topic"] for r in rows} == {"compliance.decisions.v1"}
    assert [r["event_type"] for r in rows] == [e["type"] for e in envelopes]
    assert {e["source"] for e in envelopes} == {"compliance"}
    aml = envelopes[2]["data"]
    assert (aml["transaction_id"], aml["level"]) == (screening["transaction_id"], "medium")
    assert screening["external_id"] == "tx-e2e-1"
    assert aml["rules"] == ["single_threshold"]
    resolved = envelopes[3]["data"]
    assert (resolved["case_id"], resolved["resolution"]) == (screening["case_id"], "cleared")
    # each copy carries the anchor of its audit row in the compliance database
    audit = await fetch(
        cdb, "SELECT seq, hash, kind FROM audit_log WHERE subject = $1 ORDER BY seq", user
    )
    assert [(a["kind"], a["seq"]) for a in audit] == [
        (e["type"], e["data"]["audit"]["seq"]) for e in envelopes
    ]
    outbox = {r["id"] for r in await fetch(cdb, "SELECT id FROM outbox WHERE subject = $1", user)}
    assert {r["event_id"] for r in rows} == outbox


async def test_verify_passes_against_the_running_services(stack: Stack, tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("".join(f"{n} {p.base_url}\n" for n, p in stack.procs.items()))
    result = cli("verify", "--file", str(targets), "--json", "--max-heartbeat-age", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = json.loads(result.stdout)
    assert sorted(v["name"] for v in verdicts) == ["compliance", "risk", "settlement"]
    embedded = not os.environ.get("TEST_DATABASE_URL")
    for v in verdicts:
        assert v["ok"], v
        assert v["service"] == v["name"]
        assert v["dialect"] == "postgresql"
        assert v["revision"] == v["head"]
        assert v["embedded"] is embedded  # the test server is the embedded one
        assert 0 <= abs(v["heartbeat_age_s"]) < 60


async def test_a_stale_price_alerts_once_and_never_liquidates(stack: Stack) -> None:
    """The risk process's own sweep notices the price going stale: no tick arrives."""
    rdb, account = stack.db["risk"], f"acct-{uuid.uuid4().hex[:8]}"

    async def alerts() -> list[str]:
        rows = await fetch(
            stack.bus,
            "SELECT event_type FROM bus_messages WHERE subscription = $1 AND subject = $2 "
            "ORDER BY id",
            ALERTS_SUB,
            account,
        )
        return [r["event_type"] for r in rows]

    async with stack.procs["risk"].async_client(timeout=10) as client:
        for asset, lt, decimals, age in (("WBTC", "0.75", 8, 3), ("USDC", "0.85", 6, 3600)):
            r = await client.put(
                f"/risk-parameters/{asset}",
                json={"ltv": "0.70", "liquidation_threshold": lt, "liquidation_bonus": "0.10",
                      "decimals": decimals, "max_price_age_seconds": age},
            )  # fmt: skip
            assert r.status_code == 201, r.text
        tick = price("WBTC", "60000", datetime.now(UTC))
        await publish_prices(stack.bus, tick, price("USDC", "1", datetime.now(UTC)))
        await wait_for(lambda: consumed(rdb, PRICES_SUB, tick), timeout=30)
        r = await client.put(
            f"/accounts/{account}/positions",
            json={"positions": [
                {"asset": "WBTC", "collateral": str(10**8), "debt": "0", "decimals": 8},
                {"asset": "USDC", "collateral": "0", "debt": str(30_000 * 10**6), "decimals": 6},
            ]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["health"]["status"] == "healthy"  # 60,000 x 0.75 / 30,000 = 1.5

        await wait_for(lambda: _contains(alerts, "margin.price_unavailable"), timeout=20)
        await asyncio.sleep(1.2)  # more sweeps run: still one event for this episode
        health = (await client.get(f"/accounts/{account}/health")).json()
        assert health["status"] == "unknown_price"
        assert health["factor"] is None
        assert health["stale_prices"] == ["WBTC"]
        events = await fetch(
            rdb,
            "SELECT event_type, from_tier, to_tier FROM margin_events WHERE account_id = $1",
            account,
        )
        assert [tuple(e) for e in events] == [
            ("margin.price_unavailable", "healthy", "unknown_price")
        ]
        assert await alerts() == ["margin.price_unavailable"]

        # the oracle is back: healthy again, and no tier event (the known tier is unchanged)
        fresh = price("WBTC", "60000", datetime.now(UTC))
        await publish_prices(stack.bus, fresh)
        await wait_for(lambda: consumed(rdb, PRICES_SUB, fresh), timeout=30)
        assert (await client.get(f"/accounts/{account}")).json()["status"] == "healthy"
    tier_events = "account_id = $1 AND event_type <> 'margin.price_unavailable'"
    assert await count_rows(rdb, "margin_events", tier_events, account) == 0


async def _contains(read: Any, item: str) -> bool:
    return item in await read()


async def test_settlement_commands_go_to_the_signer_and_are_confirmed_by_the_chain(
    stack: Stack,
) -> None:
    """HTTP command -> outbox -> bus (the signer's queue) -> chain event -> confirmed."""
    e = Escrow()

    async def signer_queue() -> list[dict[str, Any]]:
        rows = await fetch(
            stack.bus,
            "SELECT envelope FROM bus_messages WHERE subscription = $1 AND event_type = $2 "
            "ORDER BY id",
            SIGNER,
            "settlement.command_submitted",
        )
        return [json.loads(r["envelope"])["data"] for r in rows]

    async with stack.procs["settlement"].async_client(timeout=10) as client:

        async def command(key: str, body: dict[str, Any]) -> dict[str, Any]:
            r = await client.post("/commands", json=body, headers={"Idempotency-Key": key})
            assert r.status_code == 201, r.text
            cid = r.json()["id"]

            async def queued() -> dict[str, Any] | None:
                return next((d for d in await signer_queue() if d["command_id"] == cid), None)

            sent: dict[str, Any] = await wait_for(queued, timeout=30)
            return sent

        async def status(cid: str) -> str:
            return str((await client.get(f"/commands/{cid}")).json()["status"])

        create = await command(
            f"e2e-create-{e.address}",
            {"action": "create_escrow", "chain_id": 1, "payer": e.payer, "payee": e.payee,
             "arbiter": e.arbiter, "asset": "USDC", "amount": "2500000",
             "approvals_required": 2, "release_delay": 3600},
        )  # fmt: skip
        assert create["action"] == "create_escrow"
        assert create["correlation_id"] == create["command_id"]
        assert await status(create["command_id"]) == "submitted"
        # someone else's escrow with the very same terms confirms nothing
        lookalike = Escrow(payer=e.payer, payee=e.payee, arbiter=e.arbiter)
        await _index(stack.bus, lookalike.deployed(required=2, amount=2_500_000))
        await wait_for(lambda: _known(client, lookalike.address), timeout=30)
        assert await status(create["command_id"]) == "submitted"
        # the signer's transaction lands on chain; the indexer publishes the log with the
        # correlation id the signer echoed
        deployed = e.deployed(required=2, amount=2_500_000, correlation_id=create["correlation_id"])
        await _index(stack.bus, deployed)
        await wait_for(lambda: _is(status, create["command_id"], "confirmed"), timeout=30)
        assert (await client.get(f"/commands/{create['command_id']}")).json()[
            "escrow_address"
        ] == e.address

        approve = await command(
            f"e2e-approve-{e.address}",
            {"action": "approve", "escrow_address": e.address, "approver": e.payer},
        )
        assert approve["approver"] == e.payer
        await _index(stack.bus, e.approved(e.payer, correlation_id=approve["correlation_id"]))
        await wait_for(lambda: _is(status, approve["command_id"], "confirmed"), timeout=30)
        escrow = (await client.get(f"/escrows/{e.address}")).json()
    assert escrow["status"] == "created"
    assert escrow["approvals_count"] == 1
    sdb = stack.db["settlement"]
    assert await count_rows(sdb, "commands", "status = 'confirmed' AND (escrow_address = $1 "
                            "OR payer = $2)", e.address, e.payer) == 2  # fmt: skip


async def _index(bus_url: str, *envelopes: Envelope) -> None:
    """What the chain indexer's relay does: hand the logs to the broker."""
    async with PostgresBroker(bus_url, pool_size=1) as broker:
        await broker.publish(
            [OutgoingEvent(x.id, CHAIN, x.subject, x.type, x.to_json()) for x in envelopes]
        )


async def _known(client: httpx.AsyncClient, address: str) -> bool:
    return (await client.get(f"/escrows/{address}")).status_code == 200


async def _is(read: Any, key: str, value: str) -> bool:
    return bool(await read(key) == value)
