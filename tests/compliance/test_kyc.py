"""KYC cases and the signed provider webhook, checked in the database."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.compliance.conftest import persona_event, sign
from tests.harness import count_rows, fetch, fetchval

DOCS = [
    {"kind": "passport", "reference": "s3://kyc-docs/u-7/passport.jpg", "issuing_country": "DE",
     "sha256": "a" * 64, "mime_type": "image/jpeg"},
]  # fmt: skip


async def open_case(client: httpx.AsyncClient, user: str = "u-7", **extra: Any) -> dict[str, Any]:
    r = await client.post("/kyc/cases", json={"user_id": user, "documents": DOCS, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_case_stores_every_document_reference(db: str, client: httpx.AsyncClient) -> None:
    selfie = {"kind": "selfie", "reference": "s3://kyc-docs/u-9/selfie.jpg"}
    case = await open_case(client, user="u-9", documents=[*DOCS, selfie])
    assert [d["kind"] for d in case["documents"]] == ["passport", "selfie"]
    stored = await fetch(
        db, "SELECT kind, reference FROM kyc_documents WHERE case_id = $1::uuid ORDER BY id",
        case["id"],
    )  # fmt: skip
    assert [(d["kind"], d["reference"]) for d in stored] == [
        ("passport", DOCS[0]["reference"]),
        ("selfie", selfie["reference"]),
    ]


async def test_case_lifecycle_and_history(db: str, client: httpx.AsyncClient) -> None:
    case = await open_case(client)
    assert case["status"] == "pending"
    assert case["documents"][0]["reference"] == "s3://kyc-docs/u-7/passport.jpg"
    cid = case["id"]
    steps = [("in_review", "documents received"), ("needs_more_info", "photo blurred"),
             ("in_review", "new photo"), ("verified", "all checks passed")]  # fmt: skip
    for to, reason in steps:
        r = await client.post(
            f"/kyc/cases/{cid}/transitions",
            json={"to_status": to, "reason": reason},
        )
        assert r.status_code == 200, r.text
    assert await fetchval(db, "SELECT status FROM kyc_cases WHERE id = $1::uuid", cid) == "verified"
    history = await fetch(
        db,
        "SELECT from_status, to_status, actor, reason FROM kyc_status_history "
        "WHERE case_id = $1::uuid ORDER BY id",
        cid,
    )
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "pending"), ("pending", "in_review"), ("in_review", "needs_more_info"),
        ("needs_more_info", "in_review"), ("in_review", "verified"),
    ]  # fmt: skip
    assert history[-1]["actor"] == client.actor  # type: ignore[attr-defined]
    assert history[-1]["reason"] == "all checks passed"
    assert await count_rows(db, "audit_log", "kind = 'kyc.status_changed' AND subject = 'u-7'") == 5
    assert await count_rows(db, "outbox", "event_type = 'kyc.status_changed'") == 5

    # verified is final: 409, and nothing recorded
    r = await client.post(
        f"/kyc/cases/{cid}/transitions",
        json={"to_status": "rejected", "reason": "changed mind"},
    )
    assert r.status_code == 409
    assert r.json()["allowed"] == []
    assert await count_rows(db, "kyc_status_history") == 5


async def test_invalid_transition_and_bad_input(db: str, client: httpx.AsyncClient) -> None:
    case = await open_case(client)
    r = await client.post(
        f"/kyc/cases/{case['id']}/transitions",
        json={"to_status": "verified", "reason": "skip review"},
    )
    assert r.status_code == 409
    assert r.json()["allowed"] == ["in_review"]
    r = await client.post(
        f"/kyc/cases/{case['id']}/transitions", json={"to_status": "approved", "actor": ""}
    )
    assert r.status_code == 422
    # a client cannot say who it is: the actor is the key's identity, a body actor is refused
    assert {e["field"] for e in r.json()["errors"]} == {"to_status", "actor", "reason"}
    assert "Extra inputs" in next(e for e in r.json()["errors"] if e["field"] == "actor")["message"]
    inline = {"kind": "passport", "reference": "data:image/png;base64,AAAA"}
    r = await client.post("/kyc/cases", json={"user_id": "x", "documents": [inline]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "documents.0.reference"
    too_long = {"kind": "passport", "reference": "s3://b/" + "k" * 2048}
    r = await client.post("/kyc/cases", json={"user_id": "x", "documents": [too_long]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "documents.0.reference"
    second = await client.post("/kyc/cases", json={"user_id": "u-7"})
    assert second.status_code == 409
    assert second.json()["case_id"] == case["id"]
    missing = await client.get("/kyc/cases/6f1c1f3e-5a43-4c8b-9a59-4f7e9d1c0a11")
    assert missing.status_code == 404
    assert await count_rows(db, "kyc_cases") == 1


async def post_webhook(
    client: httpx.AsyncClient, body: bytes, header: str | None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if header is not None:
        # latin-1 on the wire, so a header may carry non-ASCII digits such as "\u00b2"
        headers["Persona-Signature"] = header.encode("latin-1")  # type: ignore[assignment]
    return await client.post("/webhooks/kyc-provider", content=body, headers=headers)


async def test_signed_webhook_moves_the_case(db: str, client: httpx.AsyncClient) -> None:
    case = await open_case(client, user="u-8")
    completed = persona_event("evt_1", "inquiry.completed", "inq_A", reference_id="u-8")
    r = await post_webhook(client, completed, sign(completed))
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "applied: in_review"
    row = await fetch(
        db, "SELECT status, provider_inquiry_id FROM kyc_cases WHERE id = $1::uuid", case["id"]
    )
    assert dict(row[0]) == {"status": "in_review", "provider_inquiry_id": "inq_A"}

    approved = persona_event("evt_2", "inquiry.approved", "inq_A")
    r = await post_webhook(client, approved, sign(approved))
    assert r.json()["outcome"] == "applied: verified"
    # the provider retries the same event: nothing changes
    r = await post_webhook(client, approved, sign(approved))
    assert r.status_code == 200
    assert r.json()["outcome"] == "duplicate"
    assert await count_rows(db, "kyc_webhook_events") == 2
    history = await fetch(
        db,
        "SELECT to_status, actor, source FROM kyc_status_history "
        "WHERE case_id = $1::uuid ORDER BY id",
        case["id"],
    )
    assert [(h["to_status"], h["actor"], h["source"]) for h in history] == [
        ("pending", client.actor, "api"),  # type: ignore[attr-defined]
        ("in_review", "provider:persona", "webhook"),
        ("verified", "provider:persona", "webhook"),
    ]
    # a late "declined" cannot undo a final decision; it is recorded as ignored
    declined = persona_event("evt_3", "inquiry.declined", "inq_A")
    r = await post_webhook(client, declined, sign(declined))
    assert r.json()["outcome"].startswith("ignored")
    assert (
        await fetchval(db, "SELECT status FROM kyc_cases WHERE id = $1::uuid", case["id"])
        == "verified"
    )


async def test_approved_straight_from_pending_passes_through_review(
    db: str, client: httpx.AsyncClient
) -> None:
    case = await open_case(client, user="u-9", provider_inquiry_id="inq_B")
    body = persona_event("evt_9", "inquiry.declined", "inq_B")
    r = await post_webhook(client, body, sign(body))
    assert r.json()["outcome"] == "applied: rejected"
    steps = await fetch(
        db,
        "SELECT to_status FROM kyc_status_history WHERE case_id = $1::uuid ORDER BY id",
        case["id"],
    )
    assert [s["to_status"] for s in steps] == ["pending", "in_review", "rejected"]


async def test_unsigned_or_forged_webhooks_are_401_and_store_nothing(
    db: str, client: httpx.AsyncClient
) -> None:
    case = await open_case(client, user="u-10", provider_inquiry_id="inq_C")
    body = persona_event("evt_x", "inquiry.approved", "inq_C")
    old = int(time.time()) - 301
    attempts = {
        "missing": None,
        "wrong secret": sign(body, secret="not-the-secret-at-all"),
        "tampered body": sign(body.replace(b"inq_C", b"inq_D")),
        "too old": sign(body, at=old),
        "garbage": "v1=deadbeef",
        # issue 17: int() of these raised ValueError -> 500 before the fix
        "superscript t": "t=\u00b2\u00b3,v1=deadbeef",
        "t too long for int()": "t=" + "9" * 5000 + ",v1=deadbeef",
        "empty t": "t=,v1=deadbeef",
    }
    for label, header in attempts.items():
        r = await post_webhook(client, body, header)
        assert r.status_code == 401, label
        assert r.headers["content-type"].startswith("application/problem+json")
    assert await count_rows(db, "kyc_webhook_events") == 0
    assert (
        await fetchval(db, "SELECT status FROM kyc_cases WHERE id = $1::uuid", case["id"])
        == "pending"
    )
    assert await count_rows(db, "kyc_status_history") == 1
    # authenticated but not an inquiry event: 422 naming the field, nothing stored
    junk = b'{"data": {"type": "event", "id": "evt_y", "attributes": {"payload": {}}}}'
    r = await post_webhook(client, junk, sign(junk))
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert "data.attributes.name" in fields
    assert await count_rows(db, "kyc_webhook_events") == 0


async def test_idempotency_key_replays_the_first_answer(db: str, client: httpx.AsyncClient) -> None:
    body = {"user_id": "u-11", "documents": DOCS}
    headers = {"Idempotency-Key": "req-1"}
    first = await client.post("/kyc/cases", json=body, headers=headers)
    again = await client.post("/kyc/cases", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replay"] == "true"
    assert await count_rows(db, "kyc_cases") == 1
    assert await count_rows(db, "audit_log") == 1
    other = await client.post("/kyc/cases", json={"user_id": "u-12"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await count_rows(db, "kyc_cases") == 1

    screen = {"names": ["Someone Unlisted"], "user_id": "u-11"}
    for _ in range(2):
        r = await client.post("/sanctions/screen", json=screen, headers={"Idempotency-Key": "s1"})
        assert r.status_code == 200
    assert await count_rows(db, "sanctions_screenings") == 1


async def _transition(client: httpx.AsyncClient, case_id: str, to: str) -> None:
    r = await client.post(
        f"/kyc/cases/{case_id}/transitions",
        json={"to_status": to, "reason": to},
    )
    assert r.status_code == 200, r.text


async def test_a_rejection_stays_across_new_cases_of_the_same_person(
    db: str, client: httpx.AsyncClient
) -> None:
    """Issue 17: the status followed only the latest case, so a rejected user opened a new
    case and was no longer blocked (and verified on it, was `clear`)."""
    rejected = await open_case(client, user="u-20")
    await _transition(client, rejected["id"], "in_review")
    await _transition(client, rejected["id"], "rejected")
    again = await open_case(client, user="u-20", documents=[])
    status = (await client.get("/users/u-20/compliance-status")).json()
    assert status["overall"] == "blocked"
    assert status["kyc"]["status"] == "pending"
    assert status["kyc"]["rejected_case_id"] == rejected["id"]
    await _transition(client, again["id"], "in_review")
    await _transition(client, again["id"], "verified")
    status = (await client.get("/users/u-20/compliance-status")).json()
    assert status["kyc"]["status"] == "verified"
    assert status["overall"] == "blocked"
    # the same passport (by its SHA-256) under another user id is the same person
    other = await open_case(client, user="u-21")
    assert other["documents"][0]["sha256"] == DOCS[0]["sha256"]
    status = (await client.get("/users/u-21/compliance-status")).json()
    assert status["overall"] == "blocked"
    assert status["kyc"]["rejected_case_id"] == rejected["id"]
    # someone else with other documents is not affected
    await client.post("/kyc/cases", json={"user_id": "u-22", "documents": []})
    assert (await client.get("/users/u-22/compliance-status")).json()["overall"] == "incomplete"
    assert await count_rows(db, "kyc_cases", "user_id = 'u-20'") == 2
