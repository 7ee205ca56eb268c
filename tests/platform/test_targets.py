"""Outbound target safety (issue 13, SSRF): refused at registration and at delivery.

The suite runs with the development allowance on (tests/conftest.py SUITE_ENV: its
receivers are local servers); these tests turn it off where they check refusals.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from fusion_prime.platform.outbound import ClientPool
from fusion_prime.platform.targets import (
    TargetPolicy,
    UnsafeTargetError,
    check_target,
    guarded_client,
)
from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import asgi_client, count_rows, fetch, local_http_server
from tests.platform.test_auth import service_env
from tests.settlement.factory import FAST, Escrow, deliver, engine_for, wait_for
from tests.settlement.receiver import receiver

OFF = {"FP_OUTBOUND_ALLOW_PRIVATE": "false"}
STRICT = TargetPolicy()
# the refused cases of the issue, as URLs a client could register
REFUSED = {
    "https://127.0.0.1/hook": "loopback",
    "https://10.1.2.3/hook": "private",
    "https://[::1]:8443/hook": "loopback",
    "https://169.254.169.254/latest/meta-data/": "metadata",
    "https://localhost/hook": "loopback",  # a host name that resolves to loopback
    "https://192.168.0.10/hook": "private",
    "https://[::ffff:127.0.0.1]/hook": "loopback",
    "http://hooks.example.com/hook": "only https",
    "https://user:secret@hooks.example.com/hook": "credentials",
    "https://metadata.google.internal/computeMetadata/v1/": "metadata",
}


def _answers(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(("url", "why"), sorted(REFUSED.items()))
async def test_unsafe_targets_are_refused(url: str, why: str) -> None:
    policy = TargetPolicy(resolve=_answers("93.184.216.34"))
    if "localhost" in url:
        policy = STRICT  # the real resolver
    with pytest.raises(UnsafeTargetError, match=why):
        await check_target(url, policy)


async def test_a_public_target_passes_and_metadata_stays_refused_in_development() -> None:
    await check_target(
        "https://hooks.example.com/x", TargetPolicy(resolve=_answers("93.184.216.34"))
    )
    development = TargetPolicy(allow_http=True, allow_private=True)
    await check_target("http://127.0.0.1:8080/x", development)
    with pytest.raises(UnsafeTargetError, match="metadata"):
        await check_target("http://169.254.169.254/", development)
    # a name with one bad address among good ones is refused
    mixed = TargetPolicy(resolve=_answers("93.184.216.34", "10.0.0.1"))
    with pytest.raises(UnsafeTargetError, match="private"):
        await check_target("https://hooks.example.com/x", mixed)


@contextmanager
def counting_server(status: int = 200, location: str | None = None) -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"hits": 0, "url": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state["hits"] += 1
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with local_http_server(Handler) as url:
        state["url"] = f"{url}/in"
        yield state


async def test_dns_rebinding_is_caught_when_connecting() -> None:
    """The name resolved to a public address when registered; now it points at loopback."""
    with counting_server() as target:
        port = target["url"].split(":")[2].split("/")[0]
        url = f"http://rebind.example:{port}/in"
        answers = iter([["93.184.216.34"], ["127.0.0.1"]])

        async def resolve(host: str, p: int) -> list[str]:
            return next(answers)

        policy = TargetPolicy(allow_http=True, resolve=resolve)
        await check_target(url, policy)  # registration: fine
        async with guarded_client(policy, timeout=5, limits=httpx.Limits()) as client:
            with pytest.raises(UnsafeTargetError, match="loopback"):
                await client.post(url, content=b"{}")
        assert target["hits"] == 0


async def test_the_alert_client_pool_checks_every_connection() -> None:
    """The alerts' aiohttp pool: a literal loopback address, a name rebound to loopback,
    and a redirect are refused or not followed; a checked public-looking name that the
    development allowance lets through reaches the receiver."""
    with counting_server() as target:
        port = target["url"].split(":")[2].split("/")[0]
        answers = iter([["93.184.216.34"], ["127.0.0.1"]])

        async def resolve(host: str, p: int) -> list[str]:
            return next(answers)

        policy = TargetPolicy(allow_http=True, resolve=resolve)
        url = f"http://rebind.example:{port}/in"
        await check_target(url, policy)  # registration: fine
        async with ClientPool(4, 5, policy=policy) as pool:
            rebound = await pool.post(url, timeout=5, content=b"{}")
            literal = await pool.post(target["url"], timeout=5, content=b"{}")
        assert rebound.status_code is None
        assert "loopback" in (rebound.error or "")
        assert literal.status_code is None
        assert "loopback" in (literal.error or "")
        assert target["hits"] == 0
        allowed = TargetPolicy(allow_http=True, allow_private=True)
        async with ClientPool(4, 5, policy=allowed) as pool:
            with counting_server(307, location=target["url"]) as redirecting:
                moved = await pool.post(redirecting["url"], timeout=5, content=b"{}")
            ok = await pool.post(target["url"], timeout=5, content=b"{}")
        assert moved.status_code == 307
        assert ok.status_code == 200
        assert target["hits"] == 1  # the redirect was not followed


async def test_redirects_are_not_followed() -> None:
    with counting_server() as inner, counting_server(302, location=None) as outer:
        policy = TargetPolicy(allow_http=True, allow_private=True)
        async with guarded_client(policy, timeout=5, limits=httpx.Limits()) as client:
            with counting_server(307, location=inner["url"]) as redirecting:
                r = await client.post(redirecting["url"], content=b"{}")
                assert r.status_code == 307
                assert redirecting["hits"] == 1
        assert inner["hits"] == 0
        assert outer["hits"] == 0


async def test_settlement_refuses_unsafe_webhooks_at_registration(
    make_database: MakeDatabase,
) -> None:
    spec = load_spec("settlement")
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db, **FAST, **OFF) as client:
        for url, why in REFUSED.items():
            r = await client.post("/webhooks", json={"url": url, "event_types": ["escrow.created"]})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["errors"][0]["field"] == "url"
            assert why in r.json()["detail"], (url, r.json())
    assert await count_rows(db, "webhook_endpoints") == 0


async def test_settlement_checks_again_at_delivery_and_follows_no_redirect(
    make_database: MakeDatabase,
) -> None:
    """Registered while the allowance was on (the receiver is on 127.0.0.1); delivered with
    it off: refused, nothing reaches the receiver. A redirect to loopback is not followed."""
    spec = load_spec("settlement")
    db = await make_database(spec.name, spec.migrations_dir)
    with receiver() as rx, counting_server() as inner:
        with counting_server(302, location=inner["url"]) as redirecting:
            async with asgi_client(spec, db, **FAST) as client:
                for url in (rx.url, redirecting["url"]):
                    r = await client.post(
                        "/webhooks", json={"url": url, "event_types": ["escrow.created"]}
                    )
                    assert r.status_code == 201, r.text
            async with asgi_client(spec, db, **FAST, **OFF), engine_for(db) as engine:
                await deliver(engine, [Escrow().deployed()])

                async def attempted() -> bool:
                    return await count_rows(db, "webhook_attempts") >= 2

                await wait_for(attempted)
            rows = await fetch(
                db,
                "SELECT e.url, a.status_code, a.error FROM webhook_attempts a JOIN "
                "webhook_deliveries d ON d.id = a.delivery_id JOIN webhook_endpoints e "
                "ON e.id = d.endpoint_id ORDER BY a.id",
            )
            assert rows
            assert all(r["status_code"] is None and "loopback" in r["error"] for r in rows), rows
            assert rx.requests == []
            assert redirecting["hits"] == 0
            # with the allowance on the redirecting target is reached, and its 302 is an
            # answer recorded as a failure: the Location is never requested
            async with asgi_client(spec, db, **FAST), engine_for(db) as engine:
                await deliver(engine, [Escrow().deployed()])

                async def redirected() -> bool:
                    return bool(await count_rows(db, "webhook_attempts", "status_code = 302"))

                await wait_for(redirected)
            assert redirecting["hits"] >= 1
            assert inner["hits"] == 0


async def test_alerts_refuse_unsafe_webhook_and_slack_targets(make_database: MakeDatabase) -> None:
    spec = load_spec("alerts")
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db, **service_env(spec), **OFF) as client:
        for channel in ("webhook", "slack"):
            for url, why in REFUSED.items():
                r = await client.post(
                    "/contacts",
                    json={"account_id": "acct-1", "name": "ops",
                          "channels": [{"channel": channel, "address": url}]},
                )  # fmt: skip
                assert r.status_code == 422, (channel, url, r.text)
                assert r.json()["errors"][0]["field"] == "channels.0.address"
                assert why in r.json()["detail"], (url, r.json())
    assert await count_rows(db, "contacts") == 0


async def test_alerts_check_again_when_sending(make_database: MakeDatabase) -> None:
    spec = load_spec("alerts")
    db = await make_database(spec.name, spec.migrations_dir)
    env = service_env(spec)
    with counting_server() as target:
        async with asgi_client(spec, db, **env) as client:
            r = await client.post(
                "/contacts",
                json={"account_id": "acct-1", "name": "ops",
                      "channels": [{"channel": "webhook", "address": target["url"]}]},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            contact = r.json()["id"]
        async with asgi_client(spec, db, **env, **OFF) as client:
            r = await client.post("/test-send", json={"contact_id": contact})
            assert r.status_code == 200, r.text
        errors = await fetch(db, "SELECT error FROM delivery_attempts")
        assert errors
        assert all("loopback" in (e["error"] or "") for e in errors), errors
        assert target["hits"] == 0
