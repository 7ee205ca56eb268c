"""Delivery on every channel, read back on the local provider servers, with the attempts
and statuses recorded in the alerts database."""

from __future__ import annotations

import time

from fusion_prime.alerts.channels.sms import status_signature
from fusion_prime.platform.signing import SIGNATURE_HEADER, verify_header
from tests.alerts.conftest import FAST, SMS_SID, Alerts, margin_event

ALL_SENT = "SELECT count(*) = $1 FROM notifications WHERE status = 'sent'"


async def test_each_channel_delivers_and_is_read_back(alerts: Alerts) -> None:
    hook = f"{alerts.http.url}/hook/desk"
    slack = f"{alerts.http.url}/slack/T000/B000/XXXX"
    c = await alerts.contact(
        "acct-1",
        ("email", "desk@example.com"),
        ("webhook", hook),
        ("slack", slack),
        ("sms", "+41790000001"),
        timezone="Europe/Zurich",
    )
    secret = c["webhook_signing_secret"]
    # the Slack URL is a credential: never shown back in full
    assert [ch["address"] for ch in c["channels"] if ch["channel"] == "slack"] == [
        f"{alerts.http.url}/slack/\u2026"
    ]
    await alerts.prefs("acct-1", channels=["email", "webhook", "slack", "sms"])
    event = margin_event("acct-1", from_tier="warning", to_tier="margin_call", factor="1.05")
    assert await alerts.consume(event) == 1
    # stored before anything is sent: one notification per recipient and channel
    rows = await alerts.rows("SELECT channel, status FROM notifications ORDER BY channel")
    assert {r["channel"] for r in rows} == {"email", "webhook", "slack", "sms"}
    await alerts.wait(ALL_SENT, 4)

    mails = alerts.smtp.to("desk@example.com")
    assert len(mails) == 1
    msg = mails[0].message
    assert "MARGIN CALL" in msg["Subject"]
    assert "acct-1" in msg["Subject"]
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "1.05" in text
    assert "ETH: 3000 USD" in text
    assert "/accounts/acct-1/health" in text
    assert "<a href=" in html
    assert "acct-1" in html
    assert alerts.smtp.logins == 1  # STARTTLS + AUTH with the configured credentials

    (wh,) = alerts.http.at("/hook/desk")
    verify_header(wh.headers[SIGNATURE_HEADER], wh.body, secret, now=time.time(), tolerance=60)
    body = wh.json()
    assert body["kind"] == "margin_call"
    assert body["account_id"] == "acct-1"
    assert body["data"]["prices"] == {"ETH": "3000", "USDC": "1"}
    assert body["event_id"] == str(event.id)

    (sl,) = alerts.http.at("/slack/T000/B000/XXXX")
    assert "MARGIN CALL" in sl.json()["text"]

    (sms,) = alerts.http.at(f"/2010-04-01/Accounts/{SMS_SID}/Messages.json")
    form = sms.form()
    assert form["To"] == "+41790000001"
    assert form["From"] == "+15005550006"
    assert "acct-1" in form["Body"]
    assert len(form["Body"]) <= 320
    assert sms.headers["Authorization"].startswith("Basic ")

    attempts = await alerts.rows(
        "SELECT a.channel, a.outcome, a.response_code, a.response, n.provider_ref "
        "FROM delivery_attempts a JOIN notifications n ON n.id = a.notification_id"
    )
    by = {a["channel"]: a for a in attempts}
    assert by["email"]["response_code"] == 250
    assert "queued as" in by["email"]["response"]
    assert by["sms"]["response_code"] == 201
    assert by["sms"]["provider_ref"].startswith("SM")
    assert {a["outcome"] for a in attempts} == {"accepted"}
    # "sent" means the provider accepted; nothing claims delivery without a confirmation
    assert await alerts.rows("SELECT 1 FROM notifications WHERE status = 'delivered'") == []


async def test_html_is_escaped(alerts: Alerts) -> None:
    await alerts.contact("acct-x", ("email", "x@example.com"))
    await alerts.prefs("acct-x")
    await alerts.consume(
        margin_event("acct-x", prices={"<script>alert(1)</script>": "1"}, to_tier="warning")
    )
    await alerts.wait(ALL_SENT, 1)
    (mail,) = alerts.smtp.to("x@example.com")
    html = mail.message.get_body(preferencelist=("html",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    text = mail.message.get_body(preferencelist=("plain",)).get_content()
    assert "<script>alert(1)</script>" in text  # plain text is not garbled by escaping


async def test_sms_becomes_delivered_only_on_a_signed_provider_report(alerts: Alerts) -> None:
    settings = alerts.client.app.state.runtime.settings  # type: ignore[attr-defined]
    callback = "https://alerts.example.test/providers/sms/status"
    object.__setattr__(settings, "sms_status_callback_url", callback)
    try:
        await alerts.contact("acct-t", ("sms", "+41790000009"))
        await alerts.prefs("acct-t", channels=["sms"])
        await alerts.consume(margin_event("acct-t", to_tier="liquidation", from_tier="warning"))
        await alerts.wait(ALL_SENT, 1)
        (sms,) = alerts.http.at(f"/2010-04-01/Accounts/{SMS_SID}/Messages.json")
        assert sms.form()["StatusCallback"] == callback
        (n,) = await alerts.rows("SELECT id, provider_ref FROM notifications")
        token = FAST["ALERTS_SMS_AUTH_TOKEN"]
        report = {"MessageSid": n["provider_ref"], "MessageStatus": "delivered"}
        r = await alerts.client.post(
            "/providers/sms/status",
            data=report,
            headers={"X-Twilio-Signature": "forged"},
        )
        assert r.status_code == 401
        (still,) = await alerts.rows("SELECT status FROM notifications")
        assert still["status"] == "sent"
        r = await alerts.client.post(
            "/providers/sms/status",
            data=report,
            headers={"X-Twilio-Signature": status_signature(token, callback, report)},
        )
        assert r.status_code == 204, r.text
        (done,) = await alerts.rows("SELECT status, delivered_at FROM notifications")
        assert done["status"] == "delivered"
        assert done["delivered_at"] is not None
    finally:
        object.__setattr__(settings, "sms_status_callback_url", None)


SMS_PATH = f"/2010-04-01/Accounts/{SMS_SID}/Messages.json"
CALLBACK = "https://alerts.example.test/providers/sms/status"


async def _report(alerts: Alerts, sid: str, status: str, **extra: str) -> None:
    report = {"MessageSid": sid, "MessageStatus": status, **extra}
    signature = status_signature(FAST["ALERTS_SMS_AUTH_TOKEN"], CALLBACK, report)
    r = await alerts.client.post(
        "/providers/sms/status", data=report, headers={"X-Twilio-Signature": signature}
    )
    assert r.status_code == 204, r.text


async def test_sms_undelivered_report_fails_over_to_the_next_channel(alerts: Alerts) -> None:
    settings = alerts.client.app.state.runtime.settings  # type: ignore[attr-defined]
    object.__setattr__(settings, "sms_status_callback_url", CALLBACK)
    try:
        await alerts.contact("acct-u", ("sms", "+41790000011"), ("email", "u@example.com"))
        await alerts.prefs("acct-u", channels=["sms"])
        await alerts.consume(margin_event("acct-u", from_tier="warning", to_tier="margin_call"))
        await alerts.wait(ALL_SENT, 1)
        (n,) = await alerts.rows("SELECT id, provider_ref FROM notifications")
        await _report(alerts, n["provider_ref"], "undelivered", ErrorCode="30003")
        (failed,) = await alerts.rows(
            "SELECT status, reason FROM notifications WHERE id = $1", n["id"]
        )
        assert failed["status"] == "failed"
        assert failed["reason"] == "provider reported undelivered (error 30003)"
        # a margin call that did not reach the phone goes to the recipient's next channel
        await alerts.wait(ALL_SENT, 1)
        (fo,) = await alerts.rows(
            "SELECT channel, failover_of, status FROM notifications WHERE failover_of IS NOT NULL"
        )
        assert (fo["channel"], fo["failover_of"], fo["status"]) == ("email", n["id"], "sent")
        (mail,) = alerts.smtp.to("u@example.com")
        assert "MARGIN CALL" in mail.message["Subject"]
    finally:
        object.__setattr__(settings, "sms_status_callback_url", None)


async def test_sms_report_before_sent_is_recorded_is_kept_and_applied(alerts: Alerts) -> None:
    settings = alerts.client.app.state.runtime.settings  # type: ignore[attr-defined]
    object.__setattr__(settings, "sms_status_callback_url", CALLBACK)
    object.__setattr__(settings, "http_timeout", 30.0)  # the provider's answer is held
    gate = alerts.http.hold(SMS_PATH)
    try:
        await alerts.contact("acct-e", ("sms", "+41790000012"), ("email", "e@example.com"))
        await alerts.prefs("acct-e", channels=["sms"])
        await alerts.consume(margin_event("acct-e", from_tier="margin_call", to_tier="liquidation"))
        deadline = time.monotonic() + 15
        while not alerts.http.arrivals(SMS_PATH):  # the provider has the message ...
            assert time.monotonic() < deadline, "the SMS never reached the provider"
            await alerts.rows("SELECT 1")
        (n,) = await alerts.rows("SELECT id, status FROM notifications")
        # ... and reports it undelivered before its answer reached the worker
        await _report(alerts, "SM" + n["id"].hex, "undelivered", ErrorCode="30005")
        assert n["status"] == "pending"
        (parked,) = await alerts.rows("SELECT provider_ref, delivered FROM provider_reports")
        assert (parked["provider_ref"], parked["delivered"]) == ("SM" + n["id"].hex, False)
        gate.set()  # the provider answers 201: the worker records it sent, then the report
        await alerts.wait(
            "SELECT count(*) FROM notifications WHERE id = $1 AND status = 'failed'", n["id"]
        )
        (row,) = await alerts.rows(
            "SELECT provider_ref, reason FROM notifications WHERE id = $1", n["id"]
        )
        assert row["provider_ref"] == "SM" + n["id"].hex
        assert row["reason"] == "provider reported undelivered (error 30005)"
        assert await alerts.rows("SELECT 1 FROM provider_reports") == []
        # and the liquidation falls over to the email channel
        await alerts.wait(ALL_SENT, 1)
        (mail,) = alerts.smtp.to("e@example.com")
        assert "LIQUIDATION" in mail.message["Subject"]
    finally:
        gate.set()
        object.__setattr__(settings, "sms_status_callback_url", None)
