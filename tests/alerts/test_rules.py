"""Retries, exhaustion and failover, dedupe and escalation, quiet hours, redelivery:
each checked on the receiving server and in the tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.alerts.conftest import Alerts, margin_event

SENT = "SELECT count(*) = $1 FROM notifications WHERE status = 'sent'"


async def test_retry_then_success_with_500_429_and_timeout(alerts: Alerts) -> None:
    alerts.http.script(
        "/hook/flaky",
        (500, {}, 0.0),
        (429, {"Retry-After": "1"}, 0.0),
        (200, {}, 2.0),  # slower than ALERTS_HTTP_TIMEOUT=1: a timeout
        (200, {}, 0.0),
    )
    await alerts.contact("acct-r", ("webhook", f"{alerts.http.url}/hook/flaky"))
    await alerts.prefs("acct-r", channels=["webhook"])
    await alerts.consume(margin_event("acct-r"))
    await alerts.wait(SENT, 1, timeout=20)
    (n,) = await alerts.rows("SELECT id, attempts FROM notifications")
    assert n["attempts"] == 4
    attempts = await alerts.rows(
        "SELECT attempt, outcome, response_code, error, attempted_at FROM delivery_attempts "
        "ORDER BY attempt"
    )
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "retry", "accepted"]
    assert [a["response_code"] for a in attempts] == [500, 429, None, 200]
    assert "Timeout" in attempts[2]["error"]
    # the 429's Retry-After (1 s) was honoured although the back-off was shorter
    assert attempts[2]["attempted_at"] - attempts[1]["attempted_at"] >= timedelta(seconds=1)
    # every request carried the same idempotency key; the provider accepted exactly once
    reqs = alerts.http.at("/hook/flaky")
    assert len({r.key for r in reqs}) == 1
    assert alerts.http.accepted_keys[str(n["id"])] >= 1
    body = await alerts.notification(n["id"])
    assert [a["outcome"] for a in body["attempts_log"]] == [
        "retry",
        "retry",
        "retry",
        "accepted",
    ]


async def test_exhaustion_then_failover_to_next_channel(alerts: Alerts) -> None:
    alerts.http.script("/hook/dead", (500, {}, 0.0))
    await alerts.contact(
        "acct-f",
        ("webhook", f"{alerts.http.url}/hook/dead"),
        ("email", "ops@example.com"),
    )
    # retries stop after 1 s for this test (ALERTS_RETRY_FOR via preferences is not a
    # thing: the service setting is 30 s, so move the deadline in the database)
    await alerts.prefs("acct-f", channels=["webhook"])
    await alerts.consume(margin_event("acct-f", from_tier="warning", to_tier="liquidation"))
    await alerts.wait("SELECT count(*) FROM delivery_attempts")
    await alerts.rows("UPDATE notifications SET retry_until = now() + interval '1 second'")
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'failed'")
    failed, *_ = await alerts.rows(
        "SELECT id, reason, attempts FROM notifications WHERE status = 'failed'"
    )
    assert failed["reason"].startswith("retries exhausted after")
    assert failed["attempts"] >= 2
    await alerts.wait(SENT, 1)
    (fo,) = await alerts.rows(
        "SELECT channel, failover_of, kind FROM notifications WHERE status = 'sent'"
    )
    assert fo["channel"] == "email"
    assert fo["failover_of"] == failed["id"]
    assert len(alerts.smtp.to("ops@example.com")) == 1
    assert {r.status for r in alerts.http.at("/hook/dead")} == {500}


async def test_smtp_refusal_fails_at_once_and_warning_does_not_fail_over(alerts: Alerts) -> None:
    alerts.smtp.refuse["gone@example.com"] = "550 5.1.1 mailbox unavailable"
    await alerts.contact(
        "acct-s", ("email", "gone@example.com"), ("webhook", f"{alerts.http.url}/hook/s")
    )
    await alerts.prefs("acct-s")
    await alerts.consume(margin_event("acct-s", to_tier="warning"))
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'failed'")
    (a,) = await alerts.rows("SELECT response_code, outcome, error FROM delivery_attempts")
    assert a["response_code"] == 550
    assert a["outcome"] == "failed"
    assert "mailbox unavailable" in a["error"]
    # a warning does not fall over (only margin_call and liquidation do)
    assert await alerts.rows("SELECT 1 FROM notifications WHERE failover_of IS NOT NULL") == []
    assert alerts.http.at("/hook/s") == []


async def test_dedupe_window_folds_and_escalation_goes_through(alerts: Alerts) -> None:
    await alerts.contact("acct-d", ("email", "d@example.com"))
    await alerts.prefs("acct-d")
    await alerts.consume(margin_event("acct-d", to_tier="warning", factor="1.20"))
    await alerts.consume(margin_event("acct-d", from_tier="warning", to_tier="warning"))
    await alerts.consume(margin_event("acct-d", to_tier="warning", factor="1.18"))
    # escalations are sent at once, whatever the window
    await alerts.consume(margin_event("acct-d", from_tier="warning", to_tier="margin_call"))
    await alerts.consume(margin_event("acct-d", from_tier="margin_call", to_tier="liquidation"))
    await alerts.wait(SENT, 3)
    rows = await alerts.rows(
        "SELECT kind, status, fold_count, reason, folded_into, id FROM notifications "
        "ORDER BY created_at, kind"
    )
    warning = next(r for r in rows if r["kind"] == "warning" and r["status"] == "sent")
    assert warning["fold_count"] == 3
    folded = [r for r in rows if r["status"] == "suppressed"]
    assert len(folded) == 2
    assert all(r["folded_into"] == warning["id"] for r in folded)
    assert all(r["reason"].startswith("dedupe") for r in folded)
    subjects = [m.message["Subject"] for m in alerts.smtp.to("d@example.com")]
    assert len(subjects) == 3
    assert any("MARGIN CALL" in s for s in subjects)
    assert any("LIQUIDATION" in s for s in subjects)
    # outside the window a new notification is opened again
    await alerts.rows("UPDATE notifications SET created_at = created_at - interval '16 minutes'")
    await alerts.consume(margin_event("acct-d", to_tier="warning", factor="1.21"))
    await alerts.wait(SENT, 4)


async def test_quiet_hours_hold_until_they_end_but_liquidation_goes_through(
    alerts: Alerts,
) -> None:
    tz = "Asia/Tokyo"
    local = datetime.now(UTC).astimezone(ZoneInfo(tz))
    start = (local - timedelta(hours=1)).time().replace(microsecond=0)
    # the quiet hours end a few seconds from now: the held warning must go out then
    ends = (local + timedelta(seconds=4)).replace(microsecond=0)
    await alerts.contact("acct-q", ("email", "q@example.com"), timezone=tz)
    await alerts.prefs(
        "acct-q", quiet_hours={"start": start.isoformat(), "end": ends.time().isoformat()}
    )
    await alerts.consume(margin_event("acct-q", to_tier="warning", factor="1.20"))
    await alerts.consume(margin_event("acct-q", from_tier="warning", to_tier="liquidation"))
    await alerts.wait(SENT, 1)
    rows = await alerts.rows(
        "SELECT kind, status, reason, next_attempt_at FROM notifications ORDER BY kind"
    )
    by = {r["kind"]: r for r in rows}
    assert by["liquidation"]["status"] == "sent"
    # held, not suppressed: pending until the end of the quiet hours
    assert by["warning"]["status"] == "pending"
    assert by["warning"]["reason"].startswith("held for quiet hours until")
    assert by["warning"]["next_attempt_at"] == ends.astimezone(UTC)
    (mail,) = alerts.smtp.to("q@example.com")
    assert "LIQUIDATION" in mail.message["Subject"]
    # a second warning during the hold folds into the held one (one message, latest values)
    await alerts.consume(margin_event("acct-q", to_tier="warning", factor="1.15"))
    await alerts.wait(SENT, 2, timeout=30)
    held = await alerts.rows(
        "SELECT n.status, n.fold_count, a.attempted_at FROM notifications n "
        "JOIN delivery_attempts a ON a.notification_id = n.id WHERE n.kind = 'warning'"
    )
    assert [(h["status"], h["fold_count"]) for h in held] == [("sent", 2)]
    assert held[0]["attempted_at"] >= ends.astimezone(UTC)
    mails = alerts.smtp.to("q@example.com")
    assert len(mails) == 2
    assert mails[1].at >= ends.timestamp()
    assert "1.15" in mails[1].message["Subject"]


async def test_redelivered_event_creates_nothing_new(alerts: Alerts) -> None:
    await alerts.contact("acct-2", ("email", "two@example.com"))
    await alerts.prefs("acct-2")
    event = margin_event("acct-2", to_tier="margin_call", from_tier="warning")
    assert await alerts.consume(event) == 1
    assert await alerts.consume(event) == 0  # the consumer after a crash before its ack
    assert await alerts.consume(event, margin_event("acct-2", "margin.reminder",
                                                    to_tier="margin_call")) == 1  # fmt: skip
    await alerts.wait(SENT, 2)
    assert len(await alerts.rows("SELECT 1 FROM events")) == 2
    assert len(await alerts.rows("SELECT 1 FROM notifications")) == 2
    assert len(alerts.smtp.to("two@example.com")) == 2


async def test_no_recipient_and_recovery_are_stored_not_dropped(alerts: Alerts) -> None:
    await alerts.consume(margin_event("nobody", to_tier="liquidation", from_tier="warning"))
    await alerts.consume(margin_event("nobody", from_tier="warning", to_tier="healthy"))
    (n,) = await alerts.rows("SELECT status, reason, kind FROM notifications")
    assert n["status"] == "no_recipient"
    assert n["kind"] == "liquidation"
    events = await alerts.rows("SELECT outcome FROM events ORDER BY received_at, outcome")
    assert sorted(e["outcome"] for e in events) == ["not_alertable", "notified"]
    r = await alerts.client.get("/notifications", params={"status": "no_recipient"})
    assert [i["account_id"] for i in r.json()["items"]] == ["nobody"]


async def test_email_without_smtp_settings_is_refused_with_a_reason(alerts: Alerts) -> None:
    # the app of this test has SMTP; build a contact and flip the setting off in-process
    settings = alerts.client.app.state.runtime.settings  # type: ignore[attr-defined]
    old = settings.smtp_host
    object.__setattr__(settings, "smtp_host", None)
    try:
        await alerts.contact("acct-n", ("email", "n@example.com"), ("sms", "+41790000002"))
        await alerts.prefs("acct-n")
        await alerts.consume(margin_event("acct-n", to_tier="margin_call", from_tier="warning"))
        await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'failed'")
        (f,) = await alerts.rows("SELECT reason FROM notifications WHERE status = 'failed'")
        assert "not configured" in f["reason"]
        assert "ALERTS_SMTP_HOST" in f["reason"]
        assert alerts.smtp.mails == []
        # a margin call then falls over to the recipient's SMS
        await alerts.wait(SENT, 1)
        (s,) = await alerts.rows("SELECT channel FROM notifications WHERE status = 'sent'")
        assert s["channel"] == "sms"
    finally:
        object.__setattr__(settings, "smtp_host", old)
