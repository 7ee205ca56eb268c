"""Secrets never leave a real service process: not in its logs, not in any response.

Each service runs as a subprocess with a DATABASE_URL that carries a password (the test
server trusts local connections, so the password is ignored but present everywhere the
URL travels) and its required secrets. Normal calls, error paths and a readiness failure
(the database refusing connections) are exercised; only the one-time webhook creation
response may contain the webhook signing secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from fusion_prime.platform.admin import quote_ident
from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import ServiceProcess, add_key, auth_headers, fetch, running

PASSWORD = "Pw-7f3c9e1d-never-shown"
SECRETS = {
    "settlement": {"SETTLEMENT_WEBHOOK_KEY": "wk-5b1e0c7a92d44f6e8a3b1c2d3e4f5a6b"},
    "compliance": {"KYC_WEBHOOK_SECRET": "kyc-2d8f4a6c1e3b5d7f9a0b"},
    "risk": {},
    "alerts": {
        "ALERTS_SECRET_KEY": "ask-9c2e4b6d8f0a1c3e5b7d9f1a3c5e7b9d",
        "ALERTS_SMTP_PASSWORD": "smtp-pw-3a5c7e9b1d-never-logged",
        "ALERTS_SMS_AUTH_TOKEN": "sms-tok-8e6c4a2b0d-never-logged",
    },
}
# calls that reach handlers, validation, not-found and authentication failures
CALLS: dict[str, list[tuple[str, str, object]]] = {
    "settlement": [
        ("GET", "/escrows?limit=5", None),
        ("GET", "/escrows/not-an-address", None),
        ("GET", "/escrows/0x" + "ab" * 20, None),
        ("POST", "/assets", {"chain_id": "x"}),
        ("GET", "/commands/00000000-0000-0000-0000-000000000000", None),
    ],
    "compliance": [
        ("POST", "/webhooks/kyc-provider", {"data": {}}),  # unsigned: 401
        ("POST", "/kyc/cases", {"user_id": "u-1"}),
        ("POST", "/kyc/cases", {"user_id": 5, "extra": True}),
        ("GET", "/users/u-1/compliance-status", None),
        ("GET", "/audit?limit=0", None),
    ],
    "risk": [
        ("GET", "/config", None),
        ("PUT", "/config", {"healthy": "x"}),
        ("GET", "/accounts/acct-1", None),
        ("PUT", "/risk-parameters/ETH", {"ltv": "2"}),
    ],
    "alerts": [
        ("GET", "/notifications?limit=5", None),
        ("GET", "/notifications?cursor=bad", None),
        ("GET", "/accounts/acct-1/preferences", None),
        (
            "POST",
            "/contacts",
            {"account_id": "a", "name": "n", "channels": [{"channel": "sms", "address": "123"}]},
        ),
        ("POST", "/providers/sms/status", None),
        ("POST", "/test-send", {"contact_id": "00000000-0000-0000-0000-000000000000"}),
    ],
}


def _exercise(proc: ServiceProcess, service: str) -> tuple[list[str], str | None]:
    """Responses (status line, headers, body) of every call; the webhook secret if any."""
    seen: list[str] = []
    secret: str | None = None
    with proc.client(timeout=15) as client:

        def call(method: str, path: str, body: object = None) -> httpx.Response:
            r = client.request(method, path, json=body, headers={"Idempotency-Key": path})
            seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            assert r.status_code < 500 or path == "/health/ready", (path, r.text)
            return r

        for path in ("/health/live", "/health/ready", "/metrics", "/no/such/route"):
            call("GET", path)
        for method, path, body in CALLS[service]:
            call(method, path, body)
        if service == "alerts":
            r = client.post(
                "/contacts",
                json={"account_id": "a", "name": "n", "channels": [
                    {"channel": "webhook", "address": "http://127.0.0.1:9/hook"},
                    {"channel": "email", "address": "n@example.com"},
                    {"channel": "sms", "address": "+41790000000"}]},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            secret = r.json()["webhook_signing_secret"]
            contact = r.json()["id"]
            for channel in ("webhook", "email", "sms"):  # refused, not configured, ...
                call("POST", "/test-send", {"contact_id": contact, "channel": channel})
            call("GET", f"/contacts/{contact}")
            call("GET", "/notifications?limit=10")
        if service == "settlement":
            r = client.post(
                "/webhooks",
                json={"url": "http://127.0.0.1:9/hook", "event_types": ["escrow.created"]},
            )
            assert r.status_code == 201, r.text
            secret = r.json()["secret"]
            assert secret
            hook = r.json()["id"]
            call("GET", f"/webhooks/{hook}")
            call("GET", f"/webhooks/{hook}/deliveries")
            call("POST", f"/webhooks/{hook}/enable")
            call("POST", "/webhooks", {"url": "not a url", "event_types": []})
    return seen, secret


async def _refuse_connections(url: str, refuse: bool) -> None:
    db = make_url(url).database
    assert db is not None
    admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    await fetch(admin, f"ALTER DATABASE {quote_ident(db)} WITH ALLOW_CONNECTIONS {not refuse}")
    if refuse:
        await fetch(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            db,
        )


@pytest.mark.parametrize("service", ["settlement", "compliance", "risk", "alerts"])
async def test_no_secret_in_logs_or_responses(
    service: str, make_database: MakeDatabase, log_dir: Path
) -> None:
    spec = load_spec(service)
    plain = await make_database(service, spec.migrations_dir)
    url = make_url(plain).set(password=PASSWORD).render_as_string(hide_password=False)
    proc = ServiceProcess.for_service(service, url, log_dir, extra_env=SECRETS[service])
    with running(proc, timeout=60):
        seen, webhook_secret = await asyncio.to_thread(_exercise, proc, service)
        # API keys: the process's own, a forged secret behind its key id, a revoked key
        assert proc.api_key
        key_id = proc.api_key.split("_")[1]
        forged = f"fpk_{key_id}_forged-secret-{'f' * 30}"
        revoked = await add_key(plain, "viewer")
        await fetch(plain, "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1",
                    revoked.split("_")[1])  # fmt: skip
        for key in (forged, revoked, "not-a-key-but-secret-looking-0123456789"):
            r = await asyncio.to_thread(
                httpx.get, f"{proc.base_url}/auth/whoami", headers=auth_headers(key), timeout=15
            )
            seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            assert r.status_code == 401, r.text
        hashes = [
            row["secret_hash"] for row in await fetch(plain, "SELECT secret_hash FROM api_keys")
        ]
        await _refuse_connections(plain, refuse=True)
        try:
            r = await asyncio.to_thread(httpx.get, f"{proc.base_url}/health/ready", timeout=30)
            seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "unavailable"
        finally:
            await _refuse_connections(plain, refuse=False)
    logs = proc.log_text()
    assert "readiness check failed" in logs  # the failure path was logged, and checked
    assert "***@" in logs  # the URL was logged, its password redacted
    # a key's secret, its hash and the hash's salt never; its lookup id may be logged
    key_secrets = [k.split("_", 2)[2] for k in (proc.api_key, forged, revoked)]
    salts = [h.split("$")[4] for h in hashes] + [h.split("$")[5] for h in hashes]
    assert key_id in logs  # the refused forgery is logged by its key id only
    for line in logs.splitlines():
        for part in (*key_secrets, *salts, "scrypt$", "not-a-key-but-secret-looking"):
            assert part not in line, f"{service} logged key material: {line[:300]}"
    secrets = [PASSWORD, *SECRETS[service].values()]
    if webhook_secret is not None:
        secrets.append(webhook_secret)
    for secret in secrets:
        assert secret not in logs, f"{service} logged a secret"
        for response in seen:
            assert secret not in response, f"{service} answered with a secret: {response[:300]}"
