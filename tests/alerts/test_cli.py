"""`fusion-prime alerts notifications|retry|test-send`, run as real processes against the
alerts database while the service (in-process, its worker running) delivers."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests.alerts.conftest import FAST, Alerts, margin_event
from tests.harness import REPO_ROOT, _env


async def cli(alerts: Alerts, *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(alerts.url, {**FAST, **alerts.smtp.env(), "COLUMNS": "250"})
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fusion_prime.cli", "alerts", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_notifications_and_retry_of_a_failed_delivery(alerts: Alerts) -> None:
    # the endpoint refuses (404: permanent) once, then accepts
    alerts.http.script("/hook/ops", (404, {}, 0.0), (200, {}, 0.0))
    await alerts.contact("acct-c", ("webhook", f"{alerts.http.url}/hook/ops"))
    await alerts.prefs("acct-c", channels=["webhook"])
    await alerts.consume(margin_event("acct-c", to_tier="warning"))
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'failed'")
    (n,) = await alerts.rows("SELECT id FROM notifications")

    listed = await cli(alerts, "notifications", "--account", "acct-c", "--status", "failed")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert str(n["id"]) in listed.stdout
    assert "HTTP 404" in listed.stdout

    done = await cli(alerts, "retry", str(n["id"]))
    assert done.returncode == 0, done.stdout + done.stderr
    # the running worker sends it again; the endpoint accepts this time
    await alerts.wait("SELECT count(*) FROM notifications WHERE status = 'sent'")
    assert [r.status for r in alerts.http.at("/hook/ops")] == [404, 200]
    (row,) = await alerts.rows("SELECT attempts FROM notifications WHERE id = $1", n["id"])
    assert row["attempts"] == 2


async def test_test_send_delivers_now_and_records_the_attempt(alerts: Alerts) -> None:
    c = await alerts.contact(
        "acct-t", ("email", "t@example.com"), ("webhook", f"{alerts.http.url}/hook/t")
    )
    out = await cli(alerts, "test-send", c["id"], "--channel", "webhook", "--kind", "margin_call")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "attempt 1: accepted code=200" in out.stdout
    (req,) = alerts.http.at("/hook/t")
    body = req.json()
    assert body["test"] is True
    assert body["kind"] == "margin_call"
    (row,) = await alerts.rows("SELECT status, test, channel, attempts FROM notifications")
    assert (row["status"], row["test"], row["channel"], row["attempts"]) == (
        "sent", True, "webhook", 1
    )  # fmt: skip
    # the contact's first channel by default: email, received by the SMTP server
    out = await cli(alerts, "test-send", c["id"])
    assert out.returncode == 0, out.stdout + out.stderr
    (mail,) = alerts.smtp.to("t@example.com")
    assert "[TEST]" in mail.message["Subject"]

    bad = await cli(alerts, "test-send", c["id"], "--channel", "sms")
    assert bad.returncode == 1
    assert "not one of this contact's channels" in bad.stdout
