"""The bugs the home-made fuzzer found (before schemathesis replaced it), pinned: each
request used to raise a 500. The values are the kinds it was built to send and a small
schemathesis budget rarely reaches: NUL characters, integers beyond bigint."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.reliability.contract import SERVICE_SECRETS as SECRETS
from tests.reliability.hostile import check_problem

A, B, C = "0x" + "ab" * 20, "0x" + "ac" * 20, "0x" + "ad" * 20
ESCROW = {
    "action": "create_escrow",
    "chain_id": 1,
    "payer": A,
    "payee": B,
    "arbiter": C,
    "asset": "ETH",
    "amount": "1",
    "approvals_required": 1,
}
CONFIG = {"healthy": "2", "warning": "1.5", "margin_call": "1.1", "hysteresis": "0.1"}
# (method, url, JSON body, the field the 422 must name)
CASES: dict[str, list[tuple[str, str, Any, str]]] = {
    "settlement": [
        (
            "POST",
            "/assets",
            {"chain_id": 2**63, "address": A, "symbol": "X", "decimals": 1},
            "chain_id",
        ),
        ("POST", "/commands", {**ESCROW, "chain_id": 2**63}, "create_escrow.chain_id"),
        ("POST", "/commands", {**ESCROW, "release_delay": 2**70}, "create_escrow.release_delay"),
        ("POST", "/commands", {**ESCROW, "asset": "a\x00b"}, "request"),
        ("GET", "/escrows?chain_id=9223372036854775808", None, "chain_id"),
    ],
    "compliance": [
        ("GET", "/audit?after_seq=9223372036854775808", None, "after_seq"),
        ("GET", "/cases?offset=9223372036854775808", None, "offset"),
        ("GET", "/users/a%00b/compliance-status", None, "request"),
        ("POST", "/kyc/cases", {"user_id": "a\x00b"}, "request"),
        ("GET", "/audit?subject=a%00b", None, "request"),
        ("GET", "/cases?user_id=a%00b", None, "request"),
        (
            "POST",
            "/aml/screen",
            {
                "user_id": "u\x00",
                "amount": "10",
                "currency": "USD",
                "type": "deposit",
                "occurred_at": "2025-01-01T00:00:00+00:00",
            },
            "request",
        ),
    ],
    "risk": [
        (
            "PUT",
            "/config",
            {**CONFIG, "reminder_interval_seconds": 10**40, "snapshot_interval_seconds": 60},
            "reminder_interval_seconds",
        ),
        (
            "PUT",
            "/config",
            {**CONFIG, "reminder_interval_seconds": 60, "snapshot_interval_seconds": 2**63 - 1},
            "snapshot_interval_seconds",
        ),
        ("GET", "/margin-events?since=0001-01-01T00:00:00%2B14:00", None, "request"),
    ],
}


@pytest.mark.parametrize("service", list(CASES))
async def test_former_500s_are_422_naming_the_field(
    service: str, make_database: MakeDatabase
) -> None:
    from tests.harness import asgi_client

    spec = load_spec(service)
    url = await make_database(service, spec.migrations_dir)
    async with asgi_client(spec, url, **SECRETS[service]) as client:
        for method, path, body, field in CASES[service]:
            content = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json", "Idempotency-Key": f"k-{path}-{field}"}
            response = await client.request(method, path, headers=headers, content=content)
            check_problem(response, f"{method} {path}")
            assert response.status_code == 422, (path, response.text)
            assert field in {e["field"] for e in response.json()["errors"]}, response.text
