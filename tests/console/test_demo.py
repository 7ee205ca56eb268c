"""`fusion-prime demo` end to end on a running `fusion-prime up`, checked on the tables,
the development mail server's Maildir and the services' APIs."""

from __future__ import annotations

import mailbox

import httpx

from tests.console.conftest import DemoRun, LocalSystem
from tests.harness import fetch, fetchval


async def test_demo_moves_accounts_sends_emails_and_leaves_records(
    local_system: LocalSystem, demo: DemoRun
) -> None:
    assert demo.returncode == 0, demo.output
    assert f"{local_system.console}/accounts/demo-alice" in demo.output
    # risk: the ETH-heavy accounts moved, the WBTC one did not (stored state and events)
    states = await fetch(
        local_system.db("risk"),
        "SELECT account_id, status FROM account_state WHERE account_id LIKE 'demo-%' "
        "ORDER BY account_id",
    )
    assert [(r["account_id"], r["status"]) for r in states] == [
        ("demo-alice", "liquidation"),
        ("demo-bob", "margin_call"),
        ("demo-carol", "healthy"),
    ]
    moved = await fetch(
        local_system.db("risk"),
        "SELECT account_id, to_tier FROM margin_events WHERE account_id IN "
        "('demo-alice', 'demo-bob') AND event_type = 'margin.tier_changed' ORDER BY created_at",
    )
    assert {(r["account_id"], r["to_tier"]) for r in moved} >= {
        ("demo-alice", "liquidation"),
        ("demo-bob", "margin_call"),
    }
    # alerts: an email per moved account, accepted by the development SMTP server
    sent = await fetch(
        local_system.db("alerts"),
        "SELECT n.account_id, n.status, a.outcome FROM notifications n "
        "JOIN delivery_attempts a ON a.notification_id = n.id "
        "WHERE n.channel = 'email' AND n.account_id IN ('demo-alice', 'demo-bob')",
    )
    assert {r["account_id"] for r in sent if r["status"] == "sent"} == {"demo-alice", "demo-bob"}
    box = mailbox.Maildir(str(local_system.data_dir / "dev" / "mail"), create=False)
    recipients = " ".join(str(m["X-Envelope-To"]) for m in box)
    assert "demo-alice+" in recipients
    assert "demo-bob+" in recipients
    assert "demo-carol+" not in recipients
    # settlement: the demo's escrows were read from the local chain and are approved
    approved = await fetchval(
        local_system.db("settlement"), "SELECT count(*) FROM escrows WHERE status = 'approved'"
    )
    assert approved >= 2
    # compliance: KYC cases, the AML screening and its case, an intact audit chain
    kyc = await fetchval(
        local_system.db("compliance"),
        "SELECT count(*) FROM kyc_cases WHERE user_id LIKE 'demo-%'",
    )
    assert kyc >= 3
    audit = await fetchval(local_system.db("compliance"), "SELECT count(*) FROM audit_log")
    headers = (
        {"Authorization": f"Bearer {local_system.admin_key}"} if local_system.admin_key else {}
    )
    chain = httpx.get(
        f"{local_system.urls['compliance']}/audit/verify", headers=headers, timeout=30
    ).json()
    assert chain["intact"] is True
    assert chain["rows"] == audit
