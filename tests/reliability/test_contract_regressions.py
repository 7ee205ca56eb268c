"""What schemathesis found, pinned (each was answered wrongly before the fix)."""

from __future__ import annotations

from typing import Any

import pytest

from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import asgi_client
from tests.reliability.contract import SERVICE_SECRETS, SERVICES

PROBLEM = "application/problem+json"


@pytest.mark.parametrize("service", SERVICES)
async def test_openapi_documents_every_error_as_problem_json(
    service: str, make_database: MakeDatabase
) -> None:
    """FastAPI documented 422 as application/json {"detail": ...} and no other error."""
    spec = load_spec(service)
    url = await make_database(service, spec.migrations_dir)
    async with asgi_client(spec, url, **SERVICE_SECRETS[service]) as client:
        doc = (await client.get("/openapi.json")).json()
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses: dict[str, Any] = op["responses"]
            for code in ("4XX", *(c for c in responses if c == "422")):
                content = responses[code]["content"]
                assert list(content) == [PROBLEM], (method, path, code)
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "503" in doc["paths"]["/health/ready"]["get"]["responses"]


async def test_405_allow_names_every_method_of_the_path(make_database: MakeDatabase) -> None:
    """GET /assets and POST /assets are two routes: Starlette's Allow named only GET, and
    our problem handler dropped the header altogether."""
    spec = load_spec("settlement")
    url = await make_database("settlement", spec.migrations_dir)
    async with asgi_client(spec, url, **SERVICE_SECRETS["settlement"]) as client:
        r = await client.request("TRACE", "/assets")
        assert r.status_code == 405
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["allow"] == "GET, POST"
        r = await client.delete("/webhooks/abc/enable")  # a path with a parameter
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        r = await client.head("/health/live")  # API routes do not answer HEAD: not listed
        assert (r.status_code, r.headers["allow"]) == (405, "GET")
        r = await client.put("/openapi.json")  # a plain route lists its own (HEAD too)
        assert r.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("risk", "/margin-events?since=0.5"),
        ("risk", "/margin-events?since=1700000000"),
        ("alerts", "/notifications?since=0.5"),
        ("oracle", "/prices/ETH-USD/history?from=12"),
        ("oracle", "/prices/ETH-USD/history?to=-3.5"),
    ],
)
async def test_a_number_is_not_a_date_time(
    service: str, path: str, make_database: MakeDatabase
) -> None:
    """Pydantic's lax mode read `since=0.5` as Unix seconds (1970) and answered 200."""
    spec = load_spec(service)
    url = await make_database(service, spec.migrations_dir)
    async with asgi_client(spec, url, **SERVICE_SECRETS[service]) as client:
        r = await client.get(path)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith(PROBLEM)
        ok = await client.get(path.split("=")[0] + "=2026-01-01T00:00:00Z")
        assert ok.status_code in (200, 404), ok.text  # a real date-time still passes


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dedupe_window_seconds": False}, "dedupe_window_seconds"),
        ({"min_interval_seconds": {"warning": True}}, "min_interval_seconds.warning"),
        ({"quiet_hours": {"start": "22:00", "end": 0}}, "quiet_hours.end"),
    ],
)
async def test_alert_preferences_refuse_booleans_and_numbers_for_durations_and_times(
    change: dict[str, Any], field: str, make_database: MakeDatabase
) -> None:
    spec = load_spec("alerts")
    url = await make_database("alerts", spec.migrations_dir)
    body = {"kinds": ["warning"], "channels": ["email"], **change}
    async with asgi_client(spec, url, **SERVICE_SECRETS["alerts"]) as client:
        r = await client.put("/accounts/acct-1/preferences", json=body)
        assert r.status_code == 422, r.text
        assert field in {e["field"] for e in r.json()["errors"]}, r.text
        rows = await client.get("/accounts/acct-1/preferences")
        assert rows.status_code == 404  # nothing was stored


def test_an_unreachable_service_database_is_not_the_messages_fault() -> None:
    """The consumer gives messages back without spending an attempt when its own database
    is down (a 30 s outage used to dead-letter healthy events); a handler error still
    counts."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from fusion_prime.platform.bus.consumer import database_unavailable

    refused = ConnectionRefusedError(111, "Connect call failed")
    wrapped = DBAPIError("connect", {}, asyncpg.CannotConnectNowError("starting up"))
    assert database_unavailable(refused)
    assert database_unavailable(wrapped)
    chained = RuntimeError("pool checkout")
    chained.__cause__ = refused
    assert database_unavailable(chained)
    assert not database_unavailable(ValueError("bad event"))
    assert not database_unavailable(DBAPIError("insert", {}, asyncpg.UniqueViolationError("x")))
