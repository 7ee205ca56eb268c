"""Read routes the operator console uses: KYC case list, sanctions screenings, audit status."""

from __future__ import annotations

import asyncpg
import httpx

from fusion_prime.platform.admin import asyncpg_dsn
from tests.compliance.test_aml import screen, tx
from tests.compliance.test_sanctions import _load_ofac
from tests.harness import add_key, auth_headers, count_rows, fetch


async def test_kyc_cases_list_newest_first_with_last_decision(
    db: str, client: httpx.AsyncClient
) -> None:
    first = (await client.post("/kyc/cases", json={"user_id": "ann"})).json()
    second = (await client.post("/kyc/cases", json={"user_id": "ben"})).json()
    reviewer = await add_key(db, "compliance_officer", name="reviewer-7")
    moved = await client.post(
        f"/kyc/cases/{first['id']}/transitions",
        json={"to_status": "in_review", "reason": "documents received"},
        headers=auth_headers(reviewer),
    )
    assert moved.status_code == 200, moved.text
    r = await client.get("/kyc/cases")
    assert r.status_code == 200
    items = r.json()["items"]
    stored = await fetch(db, "SELECT id::text FROM kyc_cases ORDER BY created_at DESC, id")
    assert [i["id"] for i in items] == [s["id"] for s in stored] == [second["id"], first["id"]]
    by_id = {i["id"]: i for i in items}
    assert by_id[first["id"]]["status"] == "in_review"
    # the actors are the callers' identities (name [key id])
    assert by_id[first["id"]]["last_actor"].startswith("reviewer-7 [")
    assert by_id[first["id"]]["last_reason"] == "documents received"
    assert by_id[second["id"]]["last_actor"].startswith("test admin [")
    only = (await client.get("/kyc/cases", params={"status": "in_review"})).json()["items"]
    assert [i["id"] for i in only] == [first["id"]]
    ben = (await client.get("/kyc/cases", params={"user_id": "ben"})).json()["items"]
    assert [i["user_id"] for i in ben] == ["ben"]
    assert (await client.get("/kyc/cases", params={"status": "nope"})).status_code == 422


async def test_sanctions_screenings_list_the_hits(db: str, client: httpx.AsyncClient) -> None:
    await _load_ofac(db)
    hit = await client.post(
        "/sanctions/screen", json={"names": ["Dmitry Kovalenko"], "user_id": "u-1"}
    )
    assert hit.json()["status"] == "hit"
    clear = await client.post("/sanctions/screen", json={"names": ["Orion Bakery"]})
    assert clear.json()["status"] == "clear"
    hits = (await client.get("/sanctions/screenings", params={"status": "hit"})).json()["items"]
    assert await count_rows(db, "sanctions_screenings", "status = 'hit'") == len(hits) == 1
    assert hits[0]["user_id"] == "u-1"
    assert hits[0]["case_id"] is not None
    assert hits[0]["candidates"], hits[0]
    every = (await client.get("/sanctions/screenings")).json()["items"]
    assert {s["status"] for s in every} == {"hit", "clear"}


async def test_audit_verify_reports_intact_then_the_altered_row(
    db: str, client: httpx.AsyncClient
) -> None:
    for i in range(3):
        await screen(client, tx("10.00", f"2025-12-01T10:0{i}:00Z", user="v"))
    ok = (await client.get("/audit/verify")).json()
    assert ok["intact"] is True
    assert ok["rows"] == ok["head_seq"] == await count_rows(db, "audit_log") == 3
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute("UPDATE audit_log SET actor = 'someone else' WHERE seq = 2")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    finally:
        await conn.close()
    broken = (await client.get("/audit/verify")).json()
    assert broken["intact"] is False
    assert broken["broken"]["seq"] == 2
    assert "altered" in broken["broken"]["reason"]
