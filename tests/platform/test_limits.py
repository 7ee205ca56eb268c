"""Request limits (issue 13): body size (413), per-key rate (429 + Retry-After), page sizes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fusion_prime.platform import auth
from fusion_prime.services import all_specs, load_spec
from tests.conftest import MakeDatabase
from tests.harness import add_key, asgi_client, auth_headers, count_rows
from tests.platform.test_auth import service_env


async def test_a_body_over_the_limit_is_413_and_nothing_is_stored(
    make_database: MakeDatabase,
) -> None:
    spec = load_spec("alerts")
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db, **service_env(spec)) as client:
        big = {"account_id": "acct-1", "name": "x" * (1024 * 1024 + 1),
               "channels": [{"channel": "email", "address": "a@example.com"}]}  # fmt: skip
        r = await client.post("/contacts", content=json.dumps(big))
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "1048576 bytes" in r.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            data = json.dumps(big).encode()
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        r = await client.post("/contacts", content=chunks())
        assert r.status_code == 413, r.text
        assert await count_rows(db, "contacts") == 0
        small = await client.post(
            "/contacts",
            json={"account_id": "acct-1", "name": "ops",
                  "channels": [{"channel": "email", "address": "ops@example.com"}]},
        )  # fmt: skip
        assert small.status_code == 201, small.text


async def test_a_key_over_its_rate_gets_429_with_retry_after(make_database: MakeDatabase) -> None:
    spec = load_spec("oracle")
    db = await make_database(spec.name, spec.migrations_dir)
    env = {"FP_RATE_LIMIT_PER_SECOND": "0.01", "FP_RATE_LIMIT_BURST": "5"}
    async with asgi_client(spec, db, **env) as client:
        codes = [(await client.get("/feeds")).status_code for _ in range(5)]
        assert codes == [200] * 5
        r = await client.get("/feeds")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["retry_after"] == int(r.headers["retry-after"])
        # per key: another key still has its own bucket
        other = await add_key(db, "viewer")
        assert (await client.get("/feeds", headers=auth_headers(other))).status_code == 200


def test_token_buckets_refill_at_the_rate() -> None:
    now = [0.0]
    buckets = auth.TokenBuckets(2.0, 3, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(3)] == [None, None, None]
    wait = buckets.take("k")
    assert wait is not None
    assert abs(wait - 0.5) < 1e-9
    assert buckets.take("other") is None
    now[0] += 0.5
    assert buckets.take("k") is None
    assert buckets.take("k") is not None


async def test_failed_guesses_of_a_key_are_slowed_down(make_database: MakeDatabase) -> None:
    spec = load_spec("oracle")
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db) as client:
        key_id = client.api_key.split("_")[1]  # type: ignore[attr-defined]
        assert (await client.get("/feeds")).status_code == 200  # in use: verified, cached
        guess = auth_headers(f"fpk_{key_id}_" + "x" * 43)
        codes = [(await client.get("/feeds", headers=guess)).status_code for _ in range(11)]
        assert codes == [401] * 10 + [429]
        # the real key in use is not locked out by someone guessing its secret
        assert (await client.get("/feeds")).status_code == 200


def test_every_page_size_is_capped() -> None:
    """Every `limit` query parameter of every route has a maximum of at most 1000."""
    from fusion_prime.platform.app import create_app
    from fusion_prime.platform.database import normalise_database_url

    seen = 0
    for spec in all_specs():
        settings = spec.settings_cls(
            DATABASE_URL="postgresql://u@h/db", FP_ENV="test", **service_env(spec)
        )
        app = create_app(spec, settings, normalise_database_url("postgresql://u@h/db", service="x"))
        for path, ops in app.openapi()["paths"].items():
            for method, op in ops.items():
                for p in op.get("parameters", []):
                    if p["name"] == "limit":
                        seen += 1
                        schema = p["schema"]
                        assert schema.get("maximum", 10**9) <= 1000, (spec.name, method, path)
                        assert "default" in schema, (spec.name, method, path)
    assert seen >= 6
