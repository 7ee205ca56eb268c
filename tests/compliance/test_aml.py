"""AML screening through HTTP, with the stored transactions, alerts, cases, audit rows and
outbox events checked in the database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx

from fusion_prime.platform.admin import asyncpg_dsn
from tests.compliance.conftest import load_fixture, run_cli
from tests.harness import add_key, count_rows, fetch, fetchval

NY = ZoneInfo("America/New_York")
RECENT = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
# two days ago in New York: recent enough never to be a late report (72 h)
DAY0 = (datetime.now(NY) - timedelta(days=2)).date()


def ny(day: int, hh_mm: str) -> str:
    """Wall-clock time in New York on DAY0 + `day` (DST-proof, unlike a fixed offset)."""
    hours, minutes = (int(x) for x in hh_mm.split(":"))
    return datetime.combine(DAY0 + timedelta(days=day), time(hours, minutes), tzinfo=NY).isoformat()


def tx(amount: str, at: str, user: str = "u-1", **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "amount": amount, "currency": "USD", "type": "deposit",
            "occurred_at": at, **extra}  # fmt: skip


async def screen(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/aml/screen", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def fired(result: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in result["fired_rules"]}


async def test_single_threshold_boundary(db: str, client: httpx.AsyncClient) -> None:
    below = await screen(client, tx("9999.99", ny(0, "10:00"), user="a"))
    assert below["level"] == "low"
    assert below["score"] == 0
    assert below["fired_rules"] == []
    assert below["alert_id"] is None
    assert below["rules_version"] == 2  # migration 0002
    at = await screen(client, tx("10000.00", ny(0, "10:00"), user="b"))
    assert at["level"] == "medium"
    assert fired(at) == {"single_threshold"}
    assert "10,000.00 USD" in at["fired_rules"][0]["explanation"]
    rows = await fetch(
        db, "SELECT user_id, amount::text AS a, level FROM aml_transactions ORDER BY user_id"
    )
    assert [(r["user_id"], r["a"], r["level"]) for r in rows] == [
        ("a", "9999.99", "low"),
        ("b", "10000.00", "medium"),
    ]
    alert = await fetch(db, "SELECT user_id, level, status, case_id FROM aml_alerts")
    assert [(a["user_id"], a["level"], a["status"]) for a in alert] == [("b", "medium", "open")]
    case = await fetch(
        db, "SELECT kind, level, status FROM cases WHERE id = $1", alert[0]["case_id"]
    )
    assert dict(case[0]) == {"kind": "aml", "level": "medium", "status": "open"}
    events = await fetch(db, "SELECT event_type, subject FROM outbox ORDER BY seq")
    assert [(e["event_type"], e["subject"]) for e in events] == [
        ("aml.screened", "a"),
        ("aml.screened", "b"),
    ]
    assert await count_rows(db, "audit_log", "kind = 'aml.screened'") == 2


async def test_daily_aggregate_per_business_day_and_over_24_hours(
    db: str, client: httpx.AsyncClient
) -> None:
    # 23:30 and 23:50 New York are one business day (although two UTC dates)
    first = await screen(client, tx("6000.00", ny(0, "23:30")))
    assert first["business_day"] == DAY0.isoformat()
    second = await screen(client, tx("4000.00", ny(0, "23:50")))
    assert "daily_aggregate" in fired(second)
    assert "10,000.00 USD" in second["fired_rules"][0]["explanation"]
    assert "business day" in second["fired_rules"][0]["explanation"]
    assert second["level"] == "medium"
    # 00:10 is the next business day, but midnight no longer splits the total (issue 17):
    # the rolling 24 h window still holds 6,000 + 4,000 + 5,000
    third = await screen(client, tx("5000.00", ny(1, "00:10")))
    assert third["business_day"] == (DAY0 + timedelta(days=1)).isoformat()
    assert "daily_aggregate" in fired(third)
    assert "within 24 h" in third["fired_rules"][0]["explanation"]
    days = await fetch(
        db,
        "SELECT business_day::text AS d, count(*) AS n FROM aml_transactions GROUP BY 1 ORDER BY 1",
    )
    assert [(d["d"], d["n"]) for d in days] == [
        (DAY0.isoformat(), 2),
        ((DAY0 + timedelta(days=1)).isoformat(), 1),
    ]
    # other users' amounts never count
    other = await screen(client, tx("9000.00", ny(1, "00:20"), user="u-2"))
    assert "daily_aggregate" not in fired(other)


async def test_structuring_pattern_raises_alert_and_case(
    db: str, client: httpx.AsyncClient
) -> None:
    amounts = [("9500.00", ny(0, "09:00")), ("9200.00", ny(0, "18:00"))]
    for amount, at in amounts:
        result = await screen(client, tx(amount, at, user="s"))
        assert "structuring" not in fired(result)
    # third in band within 24 h, on the next business day: the rolling 24 h total
    # (9,500 + 9,200 + 8,000) still aggregates, so structuring + aggregate -> high
    third = await screen(client, tx("8000.00", ny(1, "08:00"), user="s"))
    assert fired(third) == {"structuring", "daily_aggregate"}
    assert third["level"] == "high"
    structuring = next(f for f in third["fired_rules"] if f["rule"] == "structuring")
    assert "3 transactions between 8,000.00 USD and 10,000.00 USD" in structuring["explanation"]
    fourth = await screen(client, tx("9900.00", ny(1, "08:30"), user="s"))
    assert fired(fourth) == {"structuring", "daily_aggregate"}
    assert fourth["level"] == "high"
    assert await count_rows(db, "aml_alerts", "user_id = 's'") == 3
    levels = await fetch(db, "SELECT level FROM cases WHERE user_id = 's' ORDER BY created_at")
    assert [r["level"] for r in levels] == ["medium", "high", "high"]


async def test_velocity_and_sanctioned_counterparty(db: str, client: httpx.AsyncClient) -> None:
    for minute in range(4):
        r = await screen(client, tx("10.00", ny(0, f"10:0{minute}"), user="v"))
        assert "velocity" not in fired(r)
    r = await screen(client, tx("10.00", ny(0, "10:04"), user="v"))
    assert fired(r) == {"velocity"}
    assert r["level"] == "low"  # score 30 < 40: stored, no alert
    assert r["alert_id"] is None

    await load_fixture(db, "sdn.csv")
    hit = await screen(
        client,
        tx(
            "50.00",
            ny(0, "12:00"),
            user="w",
            counterparties=["Nordbridge Exchange"],
            addresses=["0x7f367cc41522ce07553e823bf3be79a889debe1b"],
        ),
    )
    assert fired(hit) == {"sanctions"}
    assert hit["level"] == "high"
    explanation = hit["fired_rules"][0]["explanation"]
    assert "NORDBRIDGE EXCHANGE OU" in explanation
    assert "ETH address" in explanation
    assert await count_rows(db, "cases", "user_id = 'w' AND level = 'high'") == 1


async def test_idempotent_transaction_id(db: str, client: httpx.AsyncClient) -> None:
    body = tx("12000.00", RECENT, transaction_id="ext-1")
    first = await screen(client, body)
    again = await screen(client, body)
    assert again["replayed"] is True
    assert again["transaction_id"] == first["transaction_id"]
    assert again["case_id"] == first["case_id"]
    assert await count_rows(db, "aml_transactions") == 1
    assert await count_rows(db, "aml_alerts") == 1
    changed = await client.post("/aml/screen", json={**body, "amount": "11000.00"})
    assert changed.status_code == 409


async def test_bad_input_is_422_naming_fields(db: str, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/aml/screen", json=tx("100.00", "2025-12-01T10:00:00Z") | {"currency": "EUR"}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "currency"
    r = await client.post(
        "/aml/screen",
        json={"user_id": "", "amount": 100.5, "currency": "USD", "type": "gift",
              "occurred_at": "2025-12-01T10:00:00"},
    )  # fmt: skip
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"user_id", "amount", "type", "occurred_at"}
    r = await client.post("/aml/screen", json=tx("100.00", "2099-01-01T00:00:00Z"))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "occurred_at"
    for amount in ("-5.00", "0", "1.001", "abc"):
        r = await client.post("/aml/screen", json=tx(amount, "2025-12-01T10:00:00Z"))
        assert r.status_code == 422, amount
        assert r.json()["errors"][0]["field"] == "amount"
    assert await count_rows(db, "aml_transactions") == 0
    assert await count_rows(db, "audit_log") == 0


async def test_new_rules_version_changes_thresholds(db: str, client: httpx.AsyncClient) -> None:
    officer = await add_key(db, "compliance_officer", name="mlro@example.com")
    viewer = await add_key(db, "viewer")
    refused = await run_cli(
        db, "publish-rules", "--set", "single_threshold=5000", "--api-key", viewer
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "compliance_officer" in refused.output
    result = await run_cli(
        db, "publish-rules", "--set", "single_threshold=5000", "--set", "velocity_count=3",
        "--api-key", officer, "--note", "tighter limits",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 3" in result.output
    r = await screen(client, tx("5000.00", RECENT))
    assert r["rules_version"] == 3
    assert fired(r) == {"single_threshold"}
    assert "5,000.00 USD" in r["fired_rules"][0]["explanation"]
    stored = await fetchval(
        db, "SELECT rules->>'single_threshold' FROM aml_rule_sets WHERE version = 3"
    )
    assert stored == "5000"
    by = await fetchval(db, "SELECT published_by FROM aml_rule_sets WHERE version = 3")
    assert by == f"mlro@example.com [{officer.split('_')[1]}]"  # the key's identity
    assert (await client.get("/aml/rules")).json()["version"] == 3
    bad = await run_cli(db, "publish-rules", "--set", "high_score=1000", "--api-key", officer)
    assert bad.exit_code == 1
    assert "high_score" in bad.output
    assert await count_rows(db, "aml_rule_sets") == 3


async def _waiting_backends(db: str) -> int:
    return int(
        await fetchval(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        )
    )


async def _until_waiting(db: str, n: int) -> None:
    for _ in range(200):
        if await _waiting_backends(db) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{n} screenings never reached a lock wait")


async def test_same_transaction_id_for_another_user_concurrently_is_409(
    db: str, client: httpx.AsyncClient
) -> None:
    """Two users, one transaction id, at the same time: the per-user lock did not order
    them, both passed the replay check and the second hit the unique index (500)."""
    holder = await asyncpg.connect(asyncpg_dsn(db))
    try:
        # hold the audit head so the first screening stops after inserting its row
        tx_lock = holder.transaction()
        await tx_lock.start()
        await holder.execute("SELECT 1 FROM audit_chain_head WHERE id = 1 FOR UPDATE")
        first = asyncio.create_task(
            client.post("/aml/screen", json=tx("100.00", RECENT, user="x1", transaction_id="dup"))
        )
        await _until_waiting(db, 1)
        second = asyncio.create_task(
            client.post("/aml/screen", json=tx("100.00", RECENT, user="x2", transaction_id="dup"))
        )
        await _until_waiting(db, 2)
        await tx_lock.rollback()
        r1, r2 = await asyncio.gather(first, second)
    finally:
        await holder.close()
    assert r1.status_code == 200, r1.text
    assert r2.status_code == 409, r2.text
    assert r2.headers["content-type"].startswith("application/problem+json")
    rows = await fetch(db, "SELECT user_id FROM aml_transactions WHERE external_id = 'dup'")
    assert [r["user_id"] for r in rows] == ["x1"]
    # and the same id with another user afterwards: 409 too, nothing stored
    r3 = await client.post(
        "/aml/screen", json=tx("100.00", RECENT, user="x3", transaction_id="dup")
    )
    assert r3.status_code == 409
    assert await count_rows(db, "aml_transactions") == 1


FIVE_MINUTES = [0, 1, 2, 3, 4]
ORDERS = {
    "in order": [0, 1, 2, 3, 4],
    "reversed": [4, 3, 2, 1, 0],
    "shuffled": [2, 4, 0, 3, 1],
}


async def test_five_structured_transfers_reach_the_same_level_in_any_order(
    db: str, client: httpx.AsyncClient
) -> None:
    """Issue 17: each transaction was judged only on what was stored before it arrived, so
    submitting the five 9,500 USD transfers newest-first left all of them `low`. A late
    arrival now re-scores the stored transactions it precedes."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    outcome: dict[str, dict[int, tuple[str, int, frozenset[str]]]] = {}
    for label, order in ORDERS.items():
        user = f"order-{label.replace(' ', '-')}"
        for i in order:
            at = (base + timedelta(minutes=i)).isoformat()
            await screen(client, tx("9500.00", at, user=user, transaction_id=f"{user}-{i}"))
        rows = await fetch(
            db,
            "SELECT external_id, level, score, fired FROM aml_transactions WHERE user_id = $1",
            user,
        )
        outcome[label] = {
            int(r["external_id"].rsplit("-", 1)[1]): (
                r["level"],
                r["score"],
                frozenset(f["rule"] for f in json.loads(r["fired"])),
            )
            for r in rows
        }
    assert outcome["reversed"] == outcome["in order"]
    assert outcome["shuffled"] == outcome["in order"]
    levels = [outcome["in order"][i][0] for i in FIVE_MINUTES]
    assert levels == ["low", "medium", "high", "high", "high"]
    assert "velocity" in outcome["reversed"][4][2]
    for label in ORDERS:
        user = f"order-{label.replace(' ', '-')}"
        alerts = await fetch(
            db, "SELECT level FROM aml_alerts WHERE user_id = $1 ORDER BY level", user
        )
        assert [a["level"] for a in alerts] == ["high", "high", "high", "medium"], label
        open_cases = await count_rows(db, "cases", "user_id = $1 AND status = 'open'", user)
        assert open_cases == 4, label
    # each raised score is a recorded decision: audited and published as aml.screened
    rescored = await fetch(
        db,
        "SELECT payload FROM audit_log WHERE kind = 'aml.screened' "
        "AND payload->>'rescored' = 'true' AND subject = 'order-reversed'",
    )
    assert len(rescored) >= 4
    assert (await run_cli(db, "verify-audit")).exit_code == 0


async def test_rolling_24h_aggregate_and_late_report_through_the_api(
    db: str, client: httpx.AsyncClient
) -> None:
    day = (datetime.now(NY) - timedelta(days=2)).date()
    late_evening = datetime.combine(day, time(23, 30), tzinfo=NY)
    after_midnight = late_evening + timedelta(minutes=40)
    first = await screen(client, tx("6000.00", late_evening.isoformat(), user="r"))
    second = await screen(client, tx("5000.00", after_midnight.isoformat(), user="r"))
    assert first["business_day"] != second["business_day"]
    assert fired(second) == {"daily_aggregate"}
    assert "within 24 h" in second["fired_rules"][0]["explanation"]
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    backdated = await screen(client, tx("50.00", old, user="b"))
    assert fired(backdated) == {"late_report"}
    assert backdated["level"] == "medium"
    assert await count_rows(db, "cases", "user_id = 'b' AND kind = 'aml'") == 1
