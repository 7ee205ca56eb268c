"""The risk service end to end on a real database: API, consumers, sweep, direct DB checks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.risk import service
from fusion_prime.risk.repository import PriceUpdate
from tests.harness import count_rows, fetch, fetchval
from tests.risk.conftest import Risk, price_event

ETH2 = {"asset": "ETH", "collateral": str(2 * 10**18), "decimals": 18}
WBTC01 = {"asset": "WBTC", "collateral": 10_000_000, "decimals": 8}


def usdc_debt(units: int) -> dict[str, object]:
    return {"asset": "USDC", "debt": str(units * 10**6), "decimals": 6}


async def _base_prices(risk: Risk) -> None:
    n = await risk.prices(
        price_event("ETH", "3000"), price_event("WBTC", "60000"), price_event("USDC", "1")
    )
    assert n == 3


async def test_hand_computed_account_through_the_api(risk: Risk) -> None:
    await _base_prices(risk)
    r = await risk.put_positions("acct-1", ETH2, WBTC01, usdc_debt(6000))
    assert r.status_code == 200, r.text
    h = r.json()["health"]
    assert h["status"] == "healthy"
    assert Decimal(h["factor"]) == Decimal("1.55")  # (6000 x 0.80 + 6000 x 0.75) / 6000
    assert Decimal(h["collateral_value"]) == 12000
    assert Decimal(h["borrow_capacity"]) == 2700  # 4500 + 4200 - 6000
    assert h["prices"] == {"ETH": "3000", "USDC": "1", "WBTC": "60000"}
    rows = await fetch(
        risk.url, "SELECT asset, collateral, debt, decimals FROM positions ORDER BY asset"
    )
    assert [(r["asset"], int(r["collateral"]), int(r["debt"]), r["decimals"]) for r in rows] == [
        ("ETH", 2 * 10**18, 0, 18),
        ("USDC", 0, 6000 * 10**6, 6),
        ("WBTC", 10_000_000, 0, 8),
    ]
    assert await fetchval(risk.url, "SELECT status FROM account_state") == "healthy"
    assert await count_rows(risk.url, "health_snapshots", "reason = 'tier_change'") == 1
    # healthy from the start is not an event
    assert await count_rows(risk.url, "margin_events") == 0
    live = (await risk.client.get("/accounts/acct-1/health")).json()
    assert live["factor"] == "1.55"
    assert live["price_drop_to_liquidation"].startswith("0.3548387")
    # no debt -> infinite factor rendered as null
    r = await risk.put_positions("acct-2", ETH2)
    assert r.json()["health"]["factor"] is None
    assert r.json()["health"]["status"] == "healthy"
    # replacing positions is whole: acct-1 now holds only WBTC
    r = await risk.put_positions("acct-1", WBTC01)
    assert await count_rows(risk.url, "positions", "account_id = 'acct-1'") == 1


async def test_bad_input_is_422_naming_the_field_and_writes_nothing(risk: Risk) -> None:
    await _base_prices(risk)
    assert (await risk.put_positions("keep", ETH2, usdc_debt(100))).status_code == 200
    before = await fetch(risk.url, "SELECT * FROM positions ORDER BY asset")
    cases = [
        ("keep", [ETH2, {"asset": "DOGE", "collateral": 1, "decimals": 8}], "positions.1.asset"),
        ("keep", [{"asset": "ETH", "collateral": "-5", "decimals": 18}], "positions.0.collateral"),
        ("keep", [{"asset": "ETH", "debt": -1, "decimals": 18}], "positions.0.debt"),
        ("keep", [{"asset": "ETH", "collateral": 1.5, "decimals": 18}], "positions.0.collateral"),
        ("bad id!", [ETH2], "account_id"),
        ("keep", [ETH2, ETH2], "positions.1.asset"),
        ("keep", [{"asset": "ETH", "collateral": 1, "decimals": 6}], "positions.0.decimals"),
    ]
    for account, positions, field in cases:
        r = await risk.client.put(f"/accounts/{account}/positions", json={"positions": positions})
        assert r.status_code == 422, (field, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert await fetch(risk.url, "SELECT * FROM positions ORDER BY asset") == before
    assert await count_rows(risk.url, "accounts") == 1
    assert (await risk.client.get("/accounts/nobody/health")).status_code == 404
    r = await risk.client.put(
        "/risk-parameters/ETH",
        json={
            "ltv": "0.9",
            "liquidation_threshold": "0.8",
            "liquidation_bonus": "0.05",
            "max_price_age_seconds": 60,
            "decimals": 18,
        },
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "ltv"


async def test_risk_parameters_are_versioned_never_overwritten(risk: Risk) -> None:
    body = {
        "ltv": "0.70",
        "liquidation_threshold": "0.78",
        "liquidation_bonus": "0.06",
        "max_price_age_seconds": 600,
        "decimals": 18,
    }
    r = await risk.client.put("/risk-parameters/ETH", json=body)
    assert r.status_code == 201
    assert r.json()["version"] == 2
    got = (await risk.client.get("/risk-parameters/ETH")).json()
    assert got["current"]["liquidation_threshold"] == "0.78"
    assert [v["version"] for v in got["versions"]] == [2, 1]
    rows = await fetch(
        risk.url,
        "SELECT version, liquidation_threshold FROM risk_parameters WHERE asset='ETH' ORDER BY 1",
    )
    assert [(r[0], r[1]) for r in rows] == [(1, Decimal("0.80")), (2, Decimal("0.78"))]
    assert (await risk.client.get("/risk-parameters/NOPE")).status_code == 404
    r = await risk.client.put("/risk-parameters/ETH", json={**body, "decimals": 8})
    assert r.status_code == 409
    assert await count_rows(risk.url, "risk_parameters", "asset = 'ETH'") == 2


async def test_price_ticks_drive_tier_events_and_are_idempotent(risk: Risk) -> None:
    await _base_prices(risk)
    await risk.put_positions("a1", ETH2, usdc_debt(4000))  # 4800 / 4000 = 1.2 warning
    assert await count_rows(risk.url, "margin_events") == 1  # initial non-healthy tier
    t0 = datetime.now(UTC)
    drop = price_event("ETH", "2600", t0)  # 4160 / 4000 = 1.04 margin_call
    assert await risk.prices(drop) == 1
    ev = await fetch(
        risk.url, "SELECT * FROM margin_events WHERE to_tier = 'margin_call' ORDER BY created_at"
    )
    assert len(ev) == 1
    assert ev[0]["from_tier"] == "warning"
    assert Decimal(ev[0]["factor"]) == Decimal("1.04")
    assert '"ETH": "2600"' in ev[0]["prices"]
    data = await fetchval(risk.url, "SELECT envelope::text FROM outbox WHERE id = $1", ev[0]["id"])
    assert '"ETH": "2600"' in data
    assert '"debt_value": "4000"' in data
    outbox = await fetch(risk.url, "SELECT * FROM outbox WHERE id = $1", ev[0]["id"])
    assert outbox[0]["topic"] == "alerts.margin.v1"
    assert outbox[0]["event_type"] == "margin.tier_changed"
    # same event again: the inbox drops it; an older source time changes nothing
    assert await risk.prices(drop) == 0
    await risk.prices(price_event("ETH", "1000", t0 - timedelta(seconds=5)))
    assert await fetchval(risk.url, "SELECT price FROM prices WHERE asset='ETH'") == Decimal(2600)
    assert await count_rows(risk.url, "margin_events") == 2
    # into liquidation, then margin-events filters and stats
    await risk.prices(price_event("ETH", "2400", t0 + timedelta(seconds=1)))  # 0.96
    r = await risk.client.get("/margin-events", params={"tier": "liquidation"})
    (liq,) = r.json()["events"]
    assert liq["from_tier"] == "margin_call"
    assert liq["max_repay_value"] == "2000"
    since = (t0 + timedelta(days=1)).isoformat()
    assert (await risk.client.get("/margin-events", params={"since": since})).json()["events"] == []
    assert (await risk.client.get("/margin-events", params={"tier": "bogus"})).status_code == 422
    stats = (await risk.client.get("/stats")).json()
    assert stats["tiers"]["liquidation"] == 1
    assert stats["accounts_with_positions"] == 1
    acct = (await risk.client.get("/accounts/a1/events")).json()["events"]
    assert [e["to_tier"] for e in acct] == ["liquidation", "margin_call", "warning"]
    snaps = (await risk.client.get("/accounts/a1/snapshots")).json()["snapshots"]
    assert [s["status"] for s in snaps] == ["liquidation", "margin_call", "warning"]


async def test_hysteresis_stops_flapping_at_a_boundary(risk: Risk) -> None:
    await _base_prices(risk)
    await risk.put_positions("h1", ETH2, usdc_debt(3840))  # 4800 / 3840 = 1.25 healthy
    t = datetime.now(UTC)
    # 1.2495, 1.26, 1.2495, 1.26: warning once, never back (needs >= 1.27)
    for i, p in enumerate(["2998.8", "3024", "2998.8", "3024"]):
        await risk.prices(price_event("ETH", p, t + timedelta(seconds=i + 1)))
    tiers = await fetch(risk.url, "SELECT from_tier, to_tier FROM margin_events")
    assert [(r[0], r[1]) for r in tiers] == [("healthy", "warning")]
    await risk.prices(price_event("ETH", "3060", t + timedelta(seconds=10)))  # 1.275
    tiers = await fetch(risk.url, "SELECT to_tier FROM margin_events ORDER BY created_at")
    assert [r[0] for r in tiers] == ["warning", "healthy"]


async def test_missing_and_stale_prices_one_event_per_episode(risk: Risk) -> None:
    await risk.prices(price_event("ETH", "3000"), price_event("USDC", "1"))
    # WBTC has no price yet: unknown_price, never liquidation
    r = await risk.put_positions("u1", WBTC01, usdc_debt(100000))
    assert r.json()["health"]["status"] == "unknown_price"
    assert r.json()["health"]["missing_prices"] == ["WBTC"]
    await risk.put_positions("u2", ETH2, usdc_debt(1000))
    for _ in range(3):
        await risk.run(service.sweep)
    rows = await fetch(risk.url, "SELECT account_id, event_type, to_tier FROM margin_events")
    assert [tuple(r) for r in rows] == [("u1", "margin.price_unavailable", "unknown_price")]
    # ETH goes stale an hour later: u2 gets exactly one price_unavailable
    later = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    for k in range(3):
        await risk.run(service.sweep, later + timedelta(seconds=k))
    rows = await fetch(risk.url, "SELECT event_type FROM margin_events WHERE account_id = 'u2'")
    assert [r[0] for r in rows] == ["margin.price_unavailable"]
    assert await fetchval(risk.url, "SELECT status FROM account_state WHERE account_id='u2'") == (
        "unknown_price"
    )
    # a fresh price ends the episode; back to the tier it had: no tier event
    await risk.prices(price_event("ETH", "3000"), price_event("WBTC", "60000"))
    states = dict(await fetch(risk.url, "SELECT account_id, status FROM account_state"))
    assert states == {"u1": "liquidation", "u2": "healthy"}
    assert await count_rows(risk.url, "margin_events", "account_id = 'u2'") == 1


async def test_reminders_and_periodic_snapshots(risk: Risk) -> None:
    await _base_prices(risk)
    r = await risk.client.put(
        "/config",
        json={
            "healthy": "1.25",
            "warning": "1.10",
            "margin_call": "1.00",
            "hysteresis": "0.02",
            "reminder_interval_seconds": 600,
            "snapshot_interval_seconds": 1800,
        },
    )
    assert r.status_code == 200
    assert r.json()["version"] == 2
    bad = {**r.json(), "warning": "1.30"}
    del bad["version"]
    r = await risk.client.put("/config", json=bad)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "warning"
    assert (await risk.client.get("/config")).json()["version"] == 2
    await risk.put_positions("m1", ETH2, usdc_debt(4500))  # 4800 / 4500 = 1.0667 margin_call
    await risk.put_positions("ok", ETH2)
    t = datetime.now(UTC)
    await risk.run(service.sweep, t + timedelta(minutes=5))
    assert await count_rows(risk.url, "margin_events", "event_type = 'margin.reminder'") == 0
    await risk.run(service.sweep, t + timedelta(minutes=11))
    await risk.run(service.sweep, t + timedelta(minutes=12))
    assert await count_rows(risk.url, "margin_events", "event_type = 'margin.reminder'") == 1
    assert await count_rows(risk.url, "outbox", "event_type = 'margin.reminder'") == 1
    await risk.run(service.sweep, t + timedelta(minutes=31))  # prices stale? no: 1h max age
    assert await count_rows(risk.url, "health_snapshots", "reason = 'periodic'") == 2
    assert await count_rows(risk.url, "margin_events", "event_type = 'margin.reminder'") == 2


async def test_escrow_events_keep_party_exposure(risk: Risk) -> None:
    payer, payee = "0x" + "a" * 40, "0x" + "b" * 40

    def ev(kind: str, block: int, **extra: object) -> Envelope:
        data = {
            "chain_id": 1,
            "tx_hash": "0x" + "1" * 64,
            "log_index": 0,
            "block_number": block,
            "escrow": "0x" + "c" * 40,
            **extra,
        }
        return Envelope(type=kind, source="chain-indexer", subject="0x" + "c" * 40, data=data)

    deployed = ev(
        "escrow.deployed", 10, payer=payer, payee=payee, arbiter="0x" + "9" * 40,
        amount="2500000", asset="USDC", decimals=6, approvals_required=1,
    )  # fmt: skip
    assert await risk.escrow(deployed)
    assert not await risk.escrow(deployed)  # redelivery
    view = (await risk.client.get(f"/accounts/{payer}")).json()
    assert view["escrow_exposure"]["locked"] == [
        {"asset": "USDC", "amount": "2500000", "decimals": 6, "escrows": 1}
    ]
    other = (await risk.client.get(f"/accounts/{payee}")).json()
    assert other["escrow_exposure"]["pending"][0]["amount"] == "2500000"
    await risk.escrow(ev("escrow.released", 12))
    await risk.escrow(ev("escrow.approved", 11, approver=payer))  # late, older: no reopening
    assert await fetchval(risk.url, "SELECT status FROM escrows") == "released"
    assert (await risk.client.get(f"/accounts/{payer}")).status_code == 404


async def test_an_event_after_a_refund_does_not_reopen_the_exposure(risk: Risk) -> None:
    """Regression: an approval after the refund (an anomaly in settlement) set the status
    back to approved, so the refunded amount showed up again as locked exposure."""
    payer, payee, escrow = "0x" + "d" * 40, "0x" + "e" * 40, "0x" + "f" * 40

    def ev(kind: str, block: int, **extra: object) -> Envelope:
        data = {"chain_id": 1, "tx_hash": "0x" + "2" * 64, "log_index": 0,
                "block_number": block, "escrow": escrow, **extra}  # fmt: skip
        return Envelope(type=kind, source="chain-indexer", subject=escrow, data=data)

    await risk.escrow(
        ev("escrow.deployed", 10, payer=payer, payee=payee, arbiter="0x" + "9" * 40,
           amount="700", asset="USDC", decimals=6, approvals_required=1)
    )  # fmt: skip
    await risk.escrow(ev("escrow.refunded", 11))
    await risk.escrow(ev("escrow.approved", 12, approver=payee))  # newer, but after the end
    await risk.escrow(ev("escrow.released", 13))  # a second terminal event: first one stands
    assert await fetchval(risk.url, "SELECT status FROM escrows") == "refunded"
    assert (await risk.client.get(f"/accounts/{payer}")).status_code == 404


async def test_escrow_is_approved_only_when_settlement_counts_enough_approvals(
    risk: Risk,
) -> None:
    """Regression (issue 14, item 5): one escrow.approved event marked the escrow approved
    whatever its required count. Now settlement's rule decides: distinct approvals of the
    payer, payee or current arbiter; an arbiter change revokes the old arbiter's one."""
    payer, payee, arbiter, escrow = ("0x" + c * 40 for c in "12c4")
    stranger, new_arbiter = "0x" + "5" * 40, "0x" + "6" * 40

    def ev(kind: str, block: int, **extra: object) -> Envelope:
        data = {"chain_id": 1, "tx_hash": "0x" + "7" * 64, "log_index": 0,
                "block_number": block, "escrow": escrow, **extra}  # fmt: skip
        return Envelope(type=kind, source="chain-indexer", subject=escrow, data=data)

    async def row() -> tuple[str, list[str]]:
        r = (await fetch(risk.url, "SELECT status, approvers FROM escrows"))[0]
        return r["status"], list(r["approvers"])

    # an approval delivered before the deployment waits for it, as in settlement
    await risk.escrow(ev("escrow.approved", 11, approver=payer))
    assert await count_rows(risk.url, "escrows") == 0
    await risk.escrow(
        ev("escrow.deployed", 10, payer=payer, payee=payee, arbiter=arbiter, amount="900",
           asset="USDC", decimals=6, approvals_required=2)
    )  # fmt: skip
    assert await row() == ("open", [payer])  # 1 of 2
    await risk.escrow(ev("escrow.approved", 12, approver=payer))  # the same party again
    await risk.escrow(ev("escrow.approved", 13, approver=stranger))  # not a party
    assert await row() == ("open", [payer])
    await risk.escrow(ev("escrow.approved", 14, approver=arbiter.upper().replace("0X", "0x")))
    assert await row() == ("approved", [payer, arbiter])  # 2 of 2
    # the arbiter is replaced: its approval stops counting, the escrow is open again
    await risk.escrow(ev("escrow.arbiter_changed", 15, new_arbiter=new_arbiter))
    assert await row() == ("open", [payer])
    view = (await risk.client.get(f"/accounts/{payer}")).json()
    assert view["escrow_exposure"]["locked"][0]["amount"] == "900"
    # a release without the approvals is settlement's anomaly: nothing changes here either
    await risk.escrow(ev("escrow.released", 16))
    assert await row() == ("open", [payer])
    await risk.escrow(ev("escrow.approved", 17, approver=payee))
    await risk.escrow(ev("escrow.released", 18))
    assert await row() == ("released", [payer, payee])
    assert await count_rows(risk.url, "escrow_events") == 9


async def test_escrow_deployment_without_the_approval_rule_is_refused(risk: Risk) -> None:
    """settlement refuses a deployment without approvals_required: so do we (the bus
    retries and dead-letters it) rather than guess the count."""
    escrow = "0x" + "8" * 40
    data = {"chain_id": 1, "tx_hash": "0x" + "9" * 64, "log_index": 0, "block_number": 5,
            "escrow": escrow, "payer": "0x" + "5" * 40, "payee": "0x" + "9" * 40,
            "arbiter": "0x" + "b" * 40, "amount": "5", "asset": "USDC", "decimals": 6}  # fmt: skip
    with pytest.raises(ValueError, match="approvals_required"):
        await risk.escrow(
            Envelope(type="escrow.deployed", source="chain-indexer", subject=escrow, data=data)
        )
    assert await count_rows(risk.url, "escrow_events") == 0


async def test_escrow_of_a_token_with_many_decimals_is_kept(risk: Risk) -> None:
    """Regression: settlement accepts 0-77 decimals; risk refused more than 36, so such a
    deployment failed here until it was dead-lettered and its exposure was never shown."""
    payer, escrow = "0x" + "7" * 40, "0x" + "8" * 40
    data = {"chain_id": 1, "tx_hash": "0x" + "3" * 64, "log_index": 0, "block_number": 5,
            "escrow": escrow, "payer": payer, "payee": "0x" + "9" * 40, "arbiter": "0x" + "b" * 40,
            "amount": str(10**60), "asset": "0x" + "a" * 40, "decimals": 60,
            "approvals_required": 2}  # fmt: skip
    deployed = Envelope(type="escrow.deployed", source="chain-indexer", subject=escrow, data=data)
    assert await risk.escrow(deployed)
    view = (await risk.client.get(f"/accounts/{payer}")).json()
    assert view["escrow_exposure"]["locked"] == [
        {"asset": "0x" + "a" * 40, "amount": str(10**60), "decimals": 60, "escrows": 1}
    ]


async def test_escrow_amount_as_a_float_is_refused(risk: Risk) -> None:
    """Base units are exact: a float amount (already rounded by JSON) fails the event, so
    the bus retries and dead-letters it, as settlement does, instead of storing a guess."""
    escrow = "0x" + "6" * 40
    for amount in (1e20, 700.0, "7e2"):
        data = {"chain_id": 1, "tx_hash": "0x" + "4" * 64, "log_index": 0, "block_number": 5,
                "escrow": escrow, "payer": "0x" + "5" * 40, "payee": "0x" + "9" * 40,
                "arbiter": "0x" + "b" * 40, "approvals_required": 1,
                "amount": amount, "asset": "USDC", "decimals": 6}  # fmt: skip
        deployed = Envelope(
            type="escrow.deployed", source="chain-indexer", subject=escrow, data=data
        )
        with pytest.raises(ValueError, match="amount"):
            await risk.escrow(deployed)
    assert await fetchval(risk.url, "SELECT count(*) FROM escrows") == 0


async def test_concurrent_price_batches_emit_each_tier_change_once(risk: Risk) -> None:
    await _base_prices(risk)
    for i in range(20):
        await risk.put_positions(f"c{i}", ETH2, WBTC01, usdc_debt(7000))  # 9300/7000 healthy
    t = datetime.now(UTC)
    sessions = async_sessionmaker(risk.engine, expire_on_commit=False)
    # batch A (ETH -> 1000: every account to liquidation) stays open while B arrives
    async with sessions() as a:
        await a.begin()
        update = PriceUpdate("ETH", Decimal(1000), "test", t, uuid.uuid4())
        out = await service.apply_prices(a, [update])
        assert len(out.events) == 20
        b = asyncio.create_task(risk.prices(price_event("WBTC", "10000", t)))
        await asyncio.sleep(0.5)
        assert not b.done()  # B waits for A's evaluation to commit
        await a.commit()
    await asyncio.wait_for(b, 30)
    rows = await fetch(
        risk.url, "SELECT from_tier, to_tier, count(*) AS n FROM margin_events GROUP BY 1, 2"
    )
    assert [(r["from_tier"], r["to_tier"], r["n"]) for r in rows] == [
        ("healthy", "liquidation", 20)
    ]


async def test_future_dated_price_is_refused_recorded_and_does_not_block(risk: Risk) -> None:
    """Issue 17: a price stamped an hour ahead was stored, never went stale, and shadowed
    every real price until that hour (only newer source times replace a stored one)."""
    await _base_prices(risk)
    await risk.put_positions("f1", ETH2, usdc_debt(1000))
    now = datetime.now(UTC)
    future = price_event("ETH", "9999", now + timedelta(hours=1))
    bad_number = Envelope(
        type="price.updated",
        source="oracle",
        subject="WBTC",
        data={"asset": "WBTC", "price": 1.5, "source": "x\x00y", "source_time": now.isoformat()},
    )
    # the oracle sends more fields than we read: they are accepted and ignored
    extra = price_event("USDC", "0.999", now)
    extra.data["sources"] = [{"name": "chainlink", "price": "0.999"}]
    extra.data["confidence"] = "0.98"
    # one batch, as the consumer delivers it: nothing raises, so all of it is acknowledged
    assert await risk.prices(future, bad_number, extra) == 3
    stored = dict(await fetch(risk.url, "SELECT asset, price FROM prices"))
    assert stored["ETH"] == Decimal(3000)
    assert stored["WBTC"] == Decimal(60000)
    assert stored["USDC"] == Decimal("0.999")
    rejected = await fetch(
        risk.url, "SELECT event_id, asset, reason, data FROM price_rejections ORDER BY asset"
    )
    assert [(r["event_id"], r["asset"]) for r in rejected] == [
        (future.id, "ETH"),
        (bad_number.id, "WBTC"),
    ]
    assert "ahead of" in rejected[0]["reason"]
    assert "decimal string" in rejected[1]["reason"]
    # a redelivery is absorbed by the inbox and recorded only once
    assert await risk.prices(future) == 0
    assert await count_rows(risk.url, "price_rejections") == 2
    # the next real ETH price is applied: the future one did not shadow it
    await risk.prices(price_event("ETH", "3100", now + timedelta(seconds=1)))
    assert await fetchval(risk.url, "SELECT price FROM prices WHERE asset='ETH'") == Decimal(3100)


async def test_stored_future_price_counts_as_stale(risk: Risk) -> None:
    """A future-dated price stored before the fix (or a clock jump) is not usable."""
    await _base_prices(risk)
    await risk.put_positions("f2", ETH2, usdc_debt(1000))
    await fetch(
        risk.url, "UPDATE prices SET source_time = now() + interval '2 hours' WHERE asset = 'ETH'"
    )
    health = (await risk.client.get("/accounts/f2/health")).json()
    assert health["status"] == "unknown_price"
    assert health["stale_prices"] == ["ETH"]
    await risk.run(service.sweep)
    assert await fetchval(risk.url, "SELECT status FROM account_state WHERE account_id='f2'") == (
        "unknown_price"
    )
    cfg = (await risk.client.get("/config")).json()
    assert cfg["max_future_skew_seconds"] == 60


async def test_liquidation_event_lists_repay_per_debt_asset(risk: Risk) -> None:
    await _base_prices(risk)
    # 2 ETH (4800 weighted) against 3000 USDC + 0.031 WBTC (1860) of debt
    r = await risk.put_positions(
        "l1",
        ETH2,
        {"asset": "USDC", "debt": str(3000 * 10**6), "decimals": 6},
        {"asset": "WBTC", "debt": str(3_100_000), "decimals": 8},
    )
    health = r.json()["health"]
    assert health["status"] == "liquidation"  # 4800 / 4860 = 0.9877
    repays = {x["asset"]: x for x in health["repays"]}
    assert repays["USDC"]["max_repay_value"] == "1500"
    assert repays["USDC"]["max_repay_units"] == str(1500 * 10**6)
    assert repays["WBTC"]["max_repay_value"] == "930"
    assert repays["WBTC"]["max_repay_units"] == "1550000"
    assert health["max_repay_value"] == "1500"
    assert {(s["debt_asset"], s["asset"]) for s in health["seizures"]} == {
        ("USDC", "ETH"),
        ("WBTC", "ETH"),
    }
    data = await fetchval(
        risk.url,
        "SELECT envelope->'data' FROM outbox WHERE event_type = 'margin.tier_changed' "
        "AND subject = 'l1'",
    )
    assert '"debt_asset": "WBTC"' in data
