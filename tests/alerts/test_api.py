"""The HTTP API: preferences, contacts with field-naming 422s, notifications with cursor
pagination, manual retry, test-send and the metrics."""

from __future__ import annotations

import uuid

from fusion_prime.alerts.domain import url_problem
from tests.alerts.conftest import Alerts, margin_event


async def test_preferences_round_trip_and_validation(alerts: Alerts) -> None:
    c = await alerts.contact("acct-p", ("email", "p@example.com"))
    body = await alerts.prefs(
        "acct-p",
        kinds=["liquidation", "margin_call"],
        channels=["email", "sms"],
        recipients=[c["id"]],
        quiet_hours={"start": "22:00", "end": "07:00"},
        min_interval_seconds={"reminder": 3600},
        dedupe_window_seconds=600,
    )
    r = await alerts.client.get("/accounts/acct-p/preferences")
    assert r.status_code == 200
    assert r.json() == body
    assert body["quiet_hours_bypass"] == ["liquidation"]
    (row,) = await alerts.rows("SELECT kinds, channels, dedupe_window_seconds FROM preferences")
    assert row["kinds"] == ["liquidation", "margin_call"]
    assert row["channels"] == ["email", "sms"]
    assert (await alerts.client.get("/accounts/other/preferences")).status_code == 404

    bad = [
        ({"kinds": ["sometimes"], "channels": ["email"]}, "kinds.0"),
        ({"kinds": ["warning"], "channels": ["pigeon"]}, "channels.0"),
        ({"kinds": ["warning"], "channels": ["email", "email"]}, "channels"),
        (
            {"kinds": ["warning"], "channels": ["email"], "recipients": [str(uuid.uuid4())]},
            "recipients.0",
        ),
        (
            {
                "kinds": ["warning"],
                "channels": ["email"],
                "quiet_hours": {"start": "25:00", "end": "07:00"},
            },
            "quiet_hours.start",
        ),
    ]
    for payload, field in bad:
        r = await alerts.client.put("/accounts/acct-p/preferences", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in r.json()["errors"]], r.json()


async def test_contacts_validation_names_the_field(alerts: Alerts) -> None:
    cases = [
        ([{"channel": "email", "address": "not-an-email"}], "channels.0.address"),
        ([{"channel": "email", "address": "a@b..c"}], "channels.0.address"),
        ([{"channel": "sms", "address": "0790000000"}], "channels.0.address"),
        (
            [
                {"channel": "email", "address": "a@example.com"},
                {"channel": "webhook", "address": "ftp://example.com/x"},
            ],
            "channels.1.address",
        ),
        (
            [
                {"channel": "email", "address": "a@example.com"},
                {"channel": "email", "address": "b@example.com"},
            ],
            "channels.1.channel",
        ),
    ]
    for channels, field in cases:
        r = await alerts.client.post(
            "/contacts", json={"account_id": "acct-v", "name": "V", "channels": channels}
        )
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == [field], r.json()
    r = await alerts.client.post(
        "/contacts",
        json={
            "account_id": "acct-v",
            "name": "V",
            "timezone": "Mars/Olympus",
            "channels": [{"channel": "email", "address": "a@example.com"}],
        },
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "timezone"
    assert await alerts.rows("SELECT 1 FROM contacts") == []
    # plain http webhooks are refused in production (allowed in development and test)
    assert url_problem("http://hooks.example.com/x", allow_http=False) is not None
    assert url_problem("https://hooks.example.com/x", allow_http=False) is None


async def test_contact_lifecycle(alerts: Alerts) -> None:
    c = await alerts.contact("acct-c", ("email", "c@example.com"), ("sms", "+41790000003"))
    r = await alerts.client.get("/contacts", params={"account": "acct-c"})
    assert [x["id"] for x in r.json()["items"]] == [c["id"]]
    assert (await alerts.client.get(f"/contacts/{c['id']}")).json()["channels"][1] == {
        "channel": "sms",
        "address": "+41790000003",
    }
    assert (await alerts.client.delete(f"/contacts/{c['id']}")).status_code == 204
    assert (await alerts.client.delete(f"/contacts/{c['id']}")).status_code == 404
    assert (await alerts.client.get(f"/contacts/{c['id']}")).status_code == 404
    (row,) = await alerts.rows("SELECT deleted_at FROM contacts")
    assert row["deleted_at"] is not None  # kept for the notifications that name it
    await alerts.prefs("acct-c")
    await alerts.consume(margin_event("acct-c"))
    (n,) = await alerts.rows("SELECT status FROM notifications")
    assert n["status"] == "no_recipient"


async def test_notifications_cursor_pagination_and_filters(alerts: Alerts) -> None:
    for i in range(5):
        await alerts.consume(margin_event(f"acct-{i}", to_tier="liquidation"))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await alerts.client.get("/notifications", params=params)).json()
        seen += [i["account_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"acct-{i}" for i in range(5)]
    r = await alerts.client.get("/notifications", params={"account": "acct-3"})
    assert [i["account_id"] for i in r.json()["items"]] == ["acct-3"]
    r = await alerts.client.get("/notifications", params={"since": "2999-01-01T00:00:00Z"})
    assert r.json()["items"] == []
    for params, field in [
        ({"cursor": "garbage!"}, "cursor"),
        ({"status": "lost"}, "status"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no time zone
        ({"limit": "0"}, "limit"),
    ]:
        r = await alerts.client.get("/notifications", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["errors"][0]["field"] == field
    assert (await alerts.client.get(f"/notifications/{uuid.uuid4()}")).status_code == 404


async def test_manual_retry_and_test_send(alerts: Alerts) -> None:
    alerts.http.script("/hook/m", (404, {}, 0.0), (200, {}, 0.0))
    c = await alerts.contact("acct-m", ("webhook", f"{alerts.http.url}/hook/m"))
    await alerts.prefs("acct-m", channels=["webhook"])
    await alerts.consume(margin_event("acct-m"))
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'failed'")
    (n,) = await alerts.rows("SELECT id FROM notifications")
    r = await alerts.client.post(f"/notifications/{n['id']}/retry")
    assert r.status_code == 200, r.text
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'sent'")
    body = await alerts.notification(n["id"])
    assert [a["response_code"] for a in body["attempts_log"]] == [404, 200]
    # a sent notification is not sent again by hand
    assert (await alerts.client.post(f"/notifications/{n['id']}/retry")).status_code == 409

    r = await alerts.client.post("/test-send", json={"contact_id": c["id"], "kind": "liquidation"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "sent"
    assert out["test"] is True
    assert out["attempts_log"][0]["response_code"] == 200
    last = alerts.http.at("/hook/m")[-1].json()
    assert last["test"] is True
    assert last["subject"].startswith("[TEST]")
    r = await alerts.client.post("/test-send", json={"contact_id": c["id"], "channel": "sms"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "channel"
    r = await alerts.client.post("/test-send", json={"contact_id": str(uuid.uuid4())})
    assert r.status_code == 404


async def test_metrics(alerts: Alerts) -> None:
    await alerts.contact("acct-z", ("email", "z@example.com"))
    await alerts.prefs("acct-z")
    await alerts.consume(margin_event("acct-z"))
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'sent'")
    text = (await alerts.client.get("/metrics")).text
    assert 'fp_alerts_deliveries_total{channel="email",status="sent"}' in text
    assert "fp_alerts_queue_depth" in text
    assert "fp_alerts_oldest_pending_seconds" in text
