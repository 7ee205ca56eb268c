"""The real service process: refuses to start without its webhook secret, and keeps every
decision across a kill -9 and restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fusion_prime.compliance.spec import SPEC
from fusion_prime.platform.runner import StartupRefusedError, load_settings
from tests.compliance.conftest import WEBHOOK_SECRET, persona_event, run_cli, sign
from tests.harness import ServiceProcess, count_rows, fetch, running

RECENT = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


def test_missing_webhook_secret_is_refused(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:5432/compliance")
    monkeypatch.delenv("KYC_WEBHOOK_SECRET", raising=False)
    with pytest.raises(StartupRefusedError) as exc:
        load_settings(SPEC)
    assert "KYC_WEBHOOK_SECRET" in str(exc.value)
    assert "\n" not in str(exc.value)
    monkeypatch.setenv("KYC_WEBHOOK_SECRET", "short")
    with pytest.raises(StartupRefusedError, match="at least 16 characters"):
        load_settings(SPEC)

    proc = ServiceProcess.for_service(
        "compliance", "postgresql://u@127.0.0.1:1/compliance", log_dir
    )
    proc.env.pop("KYC_WEBHOOK_SECRET", None)
    proc.start()
    assert proc.wait_exit(timeout=20) == 2  # refused at the settings check, before the database
    assert "Uvicorn running" not in proc.log_text()


async def test_decisions_survive_kill_9(db: str, log_dir: Path) -> None:
    proc = ServiceProcess.for_service(
        "compliance", db, log_dir, extra_env={"KYC_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )
    with running(proc):
        with proc.client(timeout=10) as http:
            case = http.post("/kyc/cases", json={"user_id": "p-1", "provider_inquiry_id": "inq_P"})
            assert case.status_code == 201
            body = persona_event("evt_P1", "inquiry.completed", "inq_P")
            hook = http.post(
                "/webhooks/kyc-provider",
                content=body,
                headers={"Persona-Signature": sign(body), "content-type": "application/json"},
            )
            assert hook.json()["outcome"] == "applied: in_review"
            aml = http.post(
                "/aml/screen",
                json={"user_id": "p-1", "amount": "12500.00", "currency": "USD",
                      "type": "withdrawal", "occurred_at": RECENT},
            )  # fmt: skip
            assert aml.json()["level"] == "medium"
        proc.kill9()
        proc.start()
        proc.wait_ready()
        with proc.client(timeout=10) as http:
            stored = http.get(f"/kyc/cases/{case.json()['id']}").json()
            assert stored["status"] == "in_review"
            assert len(stored["history"]) == 2
            status = http.get("/users/p-1/compliance-status").json()
            assert status["kyc"]["status"] == "in_review"
            assert status["open_alerts"] == 1
            # the provider's retry after the restart is still recognised
            again = http.post(
                "/webhooks/kyc-provider",
                content=body,
                headers={"Persona-Signature": sign(body), "content-type": "application/json"},
            )
            assert again.json()["outcome"] == "duplicate"
            cases = http.get("/cases", params={"user_id": "p-1"}).json()["items"]
            assert [c["id"] for c in cases] == [aml.json()["case_id"]]
    assert await count_rows(db, "aml_transactions", "user_id = 'p-1'") == 1
    assert await count_rows(db, "kyc_webhook_events") == 1
    kinds = await fetch(db, "SELECT kind FROM audit_log ORDER BY seq")
    assert [k["kind"] for k in kinds] == [
        "kyc.status_changed",
        "kyc.status_changed",
        "aml.screened",
    ]
    verified = await run_cli(db, "verify-audit")
    assert verified.exit_code == 0, verified.output
