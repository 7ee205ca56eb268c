"""AML screening through HTTP, with the stored transactions, alerts, cases, audit rows and
outbox events checked in the database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from fusion_prime.platform.admin import asyncpg_dsn
from tests.compliance.conftest import load_fixture, run_cli
from tests.harness import count_rows, fetch, fetchval

RECENT = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


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
    below = await screen(client, tx("9999.99", "2025-12-01T10:00:00-05:00", user="a"))
    assert below["level"] == "low"
    assert below["score"] == 0
    assert below["fired_rules"] == []
    assert below["alert_id"] is None
    assert below["rules_version"] == 1
    at = await screen(client, tx("10000.00", "2025-12-01T10:00:00-05:00", user="b"))
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


async def test_daily_aggregate_across_one_business_day_not_two(
    db: str, client: httpx.AsyncClient
) -> None:
    # 23:30 and 23:50 New York on 1 Dec are the same business day (both 2 Dec in UTC)
    first = await screen(client, tx("6000.00", "2025-12-02T04:30:00Z"))
    assert first["business_day"] == "2025-12-01"
    second = await screen(client, tx("4000.00", "2025-12-02T04:50:00Z"))
    assert "daily_aggregate" in fired(second)
    assert "10,000.00 USD" in second["fired_rules"][0]["explanation"]
    assert second["level"] == "medium"
    # 00:10 New York on 2 Dec: a new business day, so no aggregate with the day before
    third = await screen(client, tx("5000.00", "2025-12-02T05:10:00Z"))
    assert third["business_day"] == "2025-12-02"
    assert "daily_aggregate" not in fired(third)
    days = await fetch(
        db,
        "SELECT business_day::text AS d, count(*) AS n FROM aml_transactions GROUP BY 1 ORDER BY 1",
    )
    assert [(d["d"], d["n"]) for d in days] == [("2025-12-01", 2), ("2025-12-02", 1)]
    # other users' amounts never count
    other = await screen(client, tx("9000.00", "2025-12-02T05:20:00Z", user="u-2"))
    assert "daily_aggregate" not in fired(other)


async def test_structuring_pattern_raises_alert_and_case(
    db: str, client: httpx.AsyncClient
) -> None:
    amounts = [("9500.00", "2025-12-01T09:00:00-05:00"), ("9200.00", "2025-12-01T18:00:00-05:00")]
    for amount, at in amounts:
        result = await screen(client, tx(amount, at, user="s"))
        assert "structuring" not in fired(result)
    # third in band within 24 h (and next business day, so no daily aggregate)
    third = await screen(client, tx("8000.00", "2025-12-02T08:00:00-05:00", user="s"))
    assert fired(third) == {"structuring"}
    assert third["level"] == "medium"
    assert (
        "3 transactions between 8,000.00 USD and 10,000.00 USD"
        in (third["fired_rules"][0]["explanation"])
    )
    # fourth: still structuring, plus the day total (8,000 + 9,900) -> high
    fourth = await screen(client, tx("9900.00", "2025-12-02T08:30:00-05:00", user="s"))
    assert fired(fourth) == {"structuring", "daily_aggregate"}
    assert fourth["level"] == "high"
    assert await count_rows(db, "aml_alerts", "user_id = 's'") == 3
    levels = await fetch(db, "SELECT level FROM cases WHERE user_id = 's' ORDER BY created_at")
    assert [r["level"] for r in levels] == ["medium", "medium", "high"]


async def test_velocity_and_sanctioned_counterparty(db: str, client: httpx.AsyncClient) -> None:
    for minute in range(4):
        r = await screen(client, tx("10.00", f"2025-12-01T10:0{minute}:00Z", user="v"))
        assert "velocity" not in fired(r)
    r = await screen(client, tx("10.00", "2025-12-01T10:04:00Z", user="v"))
    assert fired(r) == {"velocity"}
    assert r["level"] == "low"  # score 30 < 40: stored, no alert
    assert r["alert_id"] is None

    await load_fixture(db, "sdn.csv")
    hit = await screen(
        client,
        tx(
            "50.00",
            "2025-12-01T12:00:00Z",
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
    body = tx("12000.00", "2025-12-01T10:00:00Z", transaction_id="ext-1")
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
    result = await run_cli(
        db, "publish-rules", "--set", "single_threshold=5000", "--set", "velocity_count=3",
        "--by", "mlro@example.com", "--note", "tighter limits",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 2" in result.output
    r = await screen(client, tx("5000.00", "2025-12-01T10:00:00Z"))
    assert r["rules_version"] == 2
    assert fired(r) == {"single_threshold"}
    assert "5,000.00 USD" in r["fired_rules"][0]["explanation"]
    stored = await fetchval(
        db, "SELECT rules->>'single_threshold' FROM aml_rule_sets WHERE version = 2"
    )
    assert stored == "5000"
    assert (await client.get("/aml/rules")).json()["version"] == 2
    bad = await run_cli(db, "publish-rules", "--set", "high_score=1000", "--by", "x")
    assert bad.exit_code == 1
    assert "high_score" in bad.output
    assert await count_rows(db, "aml_rule_sets") == 2


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
