"""Property-based fuzzing of every documented route of each shipped service app.

Runs in-process (ASGI) on a real migrated PostgreSQL database. Hypothesis drives the
requests from a worker thread and hands each one to the test's event loop, where the
app and its database pool live. Derandomized: CI sees the same examples every run.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.hardening.fuzz import Request, SchemaStrategies, check_response, operations, requests
from tests.harness import asgi_client

SECRETS = {
    "settlement": {"SETTLEMENT_WEBHOOK_KEY": "fuzz-webhook-key-0123456789abcdef0123"},
    "compliance": {"KYC_WEBHOOK_SECRET": "fuzz-kyc-secret-0123456789"},
    "risk": {},
    "alerts": {"ALERTS_SECRET_KEY": "fuzz-alerts-secret-key-0123456789abcdef"},
}
# examples per service; FUZZ_EXAMPLES raises it for a longer local hunt
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))


async def _fuzz(client: httpx.AsyncClient, examples: int) -> int:
    loop = asyncio.get_running_loop()
    openapi: dict[str, Any] = client.app.openapi()  # type: ignore[attr-defined]
    ops = operations(openapi)
    assert ops, "the app documents no operations"
    strategy = requests(ops, SchemaStrategies(openapi))
    seen: set[str] = set()

    def send(req: Request) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(req.send(client), loop).result(timeout=60)

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        req = data.draw(strategy)
        seen.add(req.method + " " + req.url.split("?")[0].split("/")[1])
        resp = send(req)
        check_response(req, resp)

    await asyncio.to_thread(run)
    return len(seen)


@pytest.mark.parametrize("service", ["settlement", "compliance", "risk", "alerts"])
async def test_no_5xx_and_problem_json_for_any_input(
    service: str, make_database: MakeDatabase
) -> None:
    spec = load_spec(service)
    url = await make_database(service, spec.migrations_dir)
    async with asgi_client(spec, url, **SECRETS[service]) as client:
        reached = await _fuzz(client, EXAMPLES)
    assert reached > 3, "the fuzzer barely reached the API"
