"""Access control (issue 13): every route of every service has a rule and keeps it.

The route-table test is generated from each app's own routes: a route added without a
rule fails it, and every role route is tried without a key (401), with a bad key (401)
and with a key of another role (403).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import APIRouter
from typer.testing import CliRunner

from fusion_prime.platform import auth
from fusion_prime.platform.app import create_app
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.spec import ServiceSpec
from fusion_prime.services import all_specs, load_spec
from tests.conftest import MakeDatabase
from tests.harness import add_key, asgi_client, auth_headers, fetch, fetchval

SPECS = {spec.name: spec for spec in all_specs()}
# what each service needs to start (secrets it refuses to start without, SMS reports on)
EXTRA_ENV: dict[str, dict[str, str]] = {
    "alerts": {
        "ALERTS_SMS_API_URL": "https://sms.example",
        "ALERTS_SMS_ACCOUNT_SID": "AC" + "0" * 32,
        "ALERTS_SMS_AUTH_TOKEN": "t" * 32,
        "ALERTS_SMS_FROM": "+15550000000",
        "ALERTS_SMS_STATUS_CALLBACK_URL": "https://alerts.example/providers/sms/status",
    },
}


def service_env(spec: ServiceSpec, **extra: str) -> dict[str, str]:
    env = {name: secrets.token_urlsafe(48) for name in spec.required_secrets}
    return {**env, **EXTRA_ENV.get(spec.name, {}), **extra}


def _path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


def _other_role(role: auth.Role) -> auth.Role:
    """A role that is neither `role` nor admin (so it must be refused)."""
    return next(r for r in ("operator", "risk_manager", "viewer") if r != role)


@pytest.mark.parametrize("service", sorted(SPECS))
async def test_every_route_refuses_without_a_key_and_with_the_wrong_role(
    service: str, make_database: MakeDatabase
) -> None:
    spec = SPECS[service]
    db = await make_database(spec.name, spec.migrations_dir)
    keys = {role: await add_key(db, role) for role in auth.ROLES}
    async with asgi_client(spec, db, role=None, **service_env(spec)) as client:
        app = client.app  # type: ignore[attr-defined]
        # a route without a rule fails here, naming itself
        assert auth.unprotected_routes(app) == []
        table = auth.route_table(app)
        assert any(rule is not None for _, rule in table)
        assert ("/auth/whoami", "GET") in {(r.path, m) for r, _ in table for m in r.methods}
        openapi = app.openapi()
        schemes = openapi["components"]["securitySchemes"]
        assert schemes["ApiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["ApiKey"]["description"],
        }
        for route, rule in table:
            if rule is None:
                continue
            for method in sorted(route.methods):
                url = _path(route.path)
                where = f"{method} {route.path}"
                # no key, a malformed key, a well-formed unknown key: 401 with the challenge
                for headers in ({}, auth_headers("nope"), auth_headers(auth.new_key(n=2).token)):
                    r = await client.request(method, url, headers=headers)
                    assert r.status_code == 401, (where, headers, r.text)
                    assert r.headers["content-type"] == "application/problem+json", where
                    if isinstance(rule, auth.RoleRule):
                        assert r.headers["www-authenticate"].startswith("Bearer "), where
                op = openapi["paths"][route.path][method.lower()]
                if isinstance(rule, auth.SignedRule):
                    assert "security" not in op, where  # a signature, not a key
                    assert op["x-signed-by"] == rule.scheme
                    continue
                assert op["security"] == [{"ApiKey": []}], where
                assert op["x-required-role"] == rule.role, where
                if rule.role == "viewer":
                    r = await client.request(method, url, headers=auth_headers(keys["viewer"]))
                    assert r.status_code not in (401, 403, 500), (where, r.text)
                    continue
                wrong = _other_role(rule.role)
                r = await client.request(method, url, headers=auth_headers(keys[wrong]))
                assert r.status_code == 403, (where, wrong, r.text)
                assert r.json()["required_role"] == rule.role
                assert repr(rule.role) in r.json()["detail"]
                for allowed in (rule.role, "admin"):
                    r = await client.request(method, url, headers=auth_headers(keys[allowed]))
                    assert r.status_code not in (401, 403, 500), (where, allowed, r.text)


def test_a_route_without_a_rule_is_found() -> None:
    """What makes the test above fail for a new route that forgot its rule."""
    spec = load_spec("oracle")
    extra = APIRouter()

    async def forgotten() -> dict[str, str]:
        return {}

    # (added without a decorator on purpose: `fusion-prime audit` FP502 flags the decorator
    # form statically; this is the run-time net for any form)
    extra.add_api_route("/forgotten", forgotten, methods=["GET"])

    @extra.get("/kept", dependencies=auth.requires("operator"))
    async def kept() -> dict[str, str]:
        return {}

    with_extra = ServiceSpec(
        name=spec.name,
        db_slug=spec.db_slug,
        default_port=spec.default_port,
        migrations_dir=spec.migrations_dir,
        routers=lambda: [*spec.routers(), extra],
        settings_cls=spec.settings_cls,
    )
    settings = spec.settings_cls(DATABASE_URL="postgresql://u@h/db", FP_ENV="test")
    app = create_app(
        with_extra, settings, normalise_database_url("postgresql://u@h/db", service="x")
    )
    assert auth.unprotected_routes(app) == ["['GET'] /forgotten"]


async def test_whoami_revoked_and_expired_keys(make_database: MakeDatabase) -> None:
    spec = SPECS["risk"]
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db, FP_AUTH_CACHE_SECONDS="0") as client:
        me = (await client.get("/auth/whoami")).json()
        assert me == {"key_id": client.api_key.split("_")[1], "name": "test admin", "role": "admin"}  # type: ignore[attr-defined]
        viewer = await add_key(db, "viewer", name="dashboards")
        r = await client.get("/auth/whoami", headers=auth_headers(viewer))
        assert r.json()["role"] == "viewer"
        # a wrong secret behind a real key id is the same 401 as an unknown key
        forged = viewer[: viewer.rindex("_") + 1] + "A" * 43
        r = await client.get("/auth/whoami", headers=auth_headers(forged))
        assert r.status_code == 401
        assert r.json()["detail"] == "unknown or wrong API key"
        # revoked through the command line, with the cache off: refused at once
        result = await run_cli(
            ["auth", "revoke-key", viewer.split("_")[1], "--service", "risk"], {"DATABASE_URL": db}
        )
        assert result.exit_code == 0, result.output
        assert await fetchval(
            db, "SELECT revoked_at IS NOT NULL FROM api_keys WHERE name = 'dashboards'"
        )
        r = await client.get("/auth/whoami", headers=auth_headers(viewer))
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
        assert r.headers["www-authenticate"] == 'Bearer realm="fusion-prime", error="invalid_token"'
        expired = await add_key(db, "operator", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        r = await client.get("/risk-parameters", headers=auth_headers(expired))
        assert r.status_code == 401
        assert "expired" in r.json()["detail"]


async def test_the_cache_bounds_the_revocation_delay(make_database: MakeDatabase) -> None:
    """A revoked key keeps working until its cached row is older than the TTL, no longer;
    an expiry is honoured at once even from the cache (a fake clock: no waiting)."""
    spec = SPECS["oracle"]
    db = await make_database(spec.name, spec.migrations_dir)
    engine = create_engine(normalise_database_url(db, service="oracle"), pool_size=1)
    clock = [1000.0]
    now = [datetime.now(UTC)]
    authn = auth.Authenticator(
        engine, service="oracle", ttl=10, clock=lambda: clock[0], now=lambda: now[0]
    )
    try:
        token = await add_key(db, "operator", expires_at=now[0] + timedelta(hours=1))
        assert (await authn.identify(token)).role == "operator"
        async with engine.begin() as conn:
            assert await auth.revoke_key(conn, token.split("_")[1])
        clock[0] += 10  # within the TTL: still the cached answer
        assert (await authn.identify(token)).role == "operator"
        clock[0] += 0.5  # past it: the row is read again
        with pytest.raises(auth.AuthenticationError, match="revoked"):
            await authn.identify(token)
        other = await add_key(db, "viewer", expires_at=now[0] + timedelta(minutes=5))
        assert (await authn.identify(other)).role == "viewer"
        now[0] += timedelta(minutes=5)
        with pytest.raises(auth.AuthenticationError, match="expired"):
            await authn.identify(other)
    finally:
        await engine.dispose()


async def run_cli(args: list[str], env: dict[str, str]) -> Any:
    """`fusion-prime ARGS` in a worker thread (the command runs its own event loop)."""
    from fusion_prime.cli import add_groups

    app = add_groups({"auth"})
    return await asyncio.to_thread(CliRunner().invoke, app, args, env=env)


async def test_cli_creates_lists_and_revokes_keys_shown_once(make_database: MakeDatabase) -> None:
    spec = SPECS["settlement"]
    db = await make_database(spec.name, spec.migrations_dir)
    env = {"DATABASE_URL": db, "COLUMNS": "200"}
    refused = await run_cli(["auth", "list-keys"], env=env)
    assert refused.exit_code == 2
    assert "--service" in refused.output
    created = await run_cli(
        ["auth", "create-key", "--name", "ci deployer", "--role", "operator",
         "--expires", "30d", "--service", "settlement"],
        env=env,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    token = re.search(r"fpk_[0-9a-f]{12}_\S+", created.output)
    assert token
    key_id = token.group(0).split("_")[1]
    [row] = await fetch(db, "SELECT key_id, name, role, secret_hash, expires_at FROM api_keys")
    assert (row["key_id"], row["name"], row["role"]) == (key_id, "ci deployer", "operator")
    secret = token.group(0).split("_", 2)[2]
    assert secret not in row["secret_hash"]
    assert row["secret_hash"].startswith("scrypt$16384$8$1$")
    assert row["expires_at"] > datetime.now(UTC) + timedelta(days=29)
    listed = await run_cli(["auth", "list-keys", "--service", "settlement"], env=env)
    assert listed.exit_code == 0, listed.output
    assert key_id in listed.output
    assert "active" in listed.output
    assert secret not in listed.output
    assert row["secret_hash"].split("$")[4] not in listed.output
    bad_role = await run_cli(
        ["auth", "create-key", "--name", "x", "--role", "root", "-s", "settlement"], env=env
    )
    assert bad_role.exit_code == 2
    async with asgi_client(spec, db, role=None, **service_env(spec)) as client:
        r = await client.get("/auth/whoami", headers=auth_headers(token.group(0)))
        assert r.json() == {"key_id": key_id, "name": "ci deployer", "role": "operator"}
    revoked = await run_cli(["auth", "revoke-key", key_id, "-s", "settlement"], env=env)
    assert revoked.exit_code == 0, revoked.output
    again = await run_cli(["auth", "revoke-key", key_id, "-s", "settlement"], env=env)
    assert again.exit_code == 1
    listed = await run_cli(["auth", "list-keys", "-s", "settlement"], env=env)
    assert "revoked" in listed.output


async def test_actors_are_the_keys_identity_not_the_body(make_database: MakeDatabase) -> None:
    """Risk parameter and config versions record the key; a body actor is refused (422)."""
    spec = SPECS["risk"]
    db = await make_database(spec.name, spec.migrations_dir)
    async with asgi_client(spec, db, role="risk_manager") as client:
        body = {"ltv": "0.7", "liquidation_threshold": "0.8", "liquidation_bonus": "0.05",
                "max_price_age_seconds": 60, "decimals": 18}  # fmt: skip
        claimed = await client.put("/risk-parameters/ETH", json={**body, "created_by": "ceo"})
        assert claimed.status_code == 422
        assert claimed.json()["errors"][0]["field"] == "created_by"
        r = await client.put("/risk-parameters/ETH", json=body)
        assert r.status_code == 201, r.text
        by = await fetchval(db, "SELECT created_by FROM risk_parameters WHERE asset = 'ETH'")
        assert by == client.actor  # type: ignore[attr-defined]
        assert by.startswith("test risk_manager [")
        config = (await client.get("/config")).json()
        config.pop("version")
        r = await client.put("/config", json=config)
        assert r.status_code == 200, r.text
        last = await fetchval(
            db, "SELECT created_by FROM risk_config ORDER BY version DESC LIMIT 1"
        )
        assert last == client.actor  # type: ignore[attr-defined]
        # an operator may not change risk parameters
        op = await add_key(db, "operator")
        r = await client.put("/risk-parameters/ETH", json=body, headers=auth_headers(op))
        assert r.status_code == 403
        assert await fetchval(db, "SELECT count(*) FROM risk_parameters") == 1


async def test_a_command_records_who_requested_it(make_database: MakeDatabase) -> None:
    spec = SPECS["settlement"]
    db = await make_database(spec.name, spec.migrations_dir)
    party = ["0x" + c * 40 for c in "abc"]
    body = {"action": "create_escrow", "chain_id": 1, "payer": party[0], "payee": party[1],
            "arbiter": party[2], "asset": "USDC", "amount": "1000000",
            "approvals_required": 2}  # fmt: skip
    async with asgi_client(spec, db, role="operator", **service_env(spec)) as client:
        key = {"Idempotency-Key": "who-1"}
        r = await client.post("/commands", json={**body, "requested_by": "ceo"}, headers=key)
        assert r.status_code == 422
        r = await client.post("/commands", json=body, headers=key)
        assert r.status_code == 201, r.text
        assert r.json()["requested_by"] == client.actor  # type: ignore[attr-defined]
        stored = await fetchval(
            db, "SELECT requested_by FROM commands WHERE idempotency_key = 'who-1'"
        )
        assert stored == client.actor  # type: ignore[attr-defined]
        viewer = await add_key(db, "viewer")
        r = await client.post("/commands", json=body, headers={**key, **auth_headers(viewer)})
        assert r.status_code == 403


async def test_one_key_imported_into_other_service_databases(
    make_database: MakeDatabase, tmp_path: Any
) -> None:
    """create-key in settlement's database, import-key of the same key into compliance's
    (stdin) and risk's (a file, as a mounted secret): one key, three databases, a hash of
    its own in each, the same identity on each service; the key never on the command
    line nor in the output."""
    dbs = {s: await make_database(s, SPECS[s].migrations_dir) for s in ("settlement",
           "compliance", "risk")}  # fmt: skip
    created = await run_cli(
        ["auth", "create-key", "--name", "console", "--role", "viewer", "-s", "settlement"],
        env={"DATABASE_URL": dbs["settlement"], "COLUMNS": "200"},
    )
    assert created.exit_code == 0, created.output
    found = re.search(r"fpk_[0-9a-f]{12}_\S+", created.output)
    assert found
    token = found.group(0)
    key_id, secret = token.split("_", 2)[1:]

    from fusion_prime.cli import add_groups

    def imp(service: str, *extra: str, role: str = "viewer", stdin: str | None = None) -> Any:
        args = ["auth", "import-key", "--name", "console", "--role", role, "-s", service]
        env = {"DATABASE_URL": dbs[service], "COLUMNS": "200"}
        return asyncio.to_thread(
            CliRunner().invoke, add_groups({"auth"}), [*args, *extra], input=stdin, env=env
        )

    by_stdin = await imp("compliance", stdin=token + "\n")
    assert by_stdin.exit_code == 0, by_stdin.output
    assert f"key {key_id} (viewer) imported in compliance" in by_stdin.output
    key_file = tmp_path / "console-key"
    key_file.write_text(token)
    by_file = await imp("risk", "--key-file", str(key_file))
    assert by_file.exit_code == 0, by_file.output
    assert secret not in by_stdin.output + by_file.output
    hashes = set()
    for service, db in dbs.items():
        [row] = await fetch(db, "SELECT key_id, name, role, secret_hash, revoked_at FROM api_keys")
        assert (row["key_id"], row["name"], row["role"]) == (key_id, "console", "viewer")
        assert row["revoked_at"] is None
        assert secret not in row["secret_hash"]
        assert auth.verify_secret(secret, row["secret_hash"])
        hashes.add(row["secret_hash"])
        spec = SPECS[service]
        async with asgi_client(spec, db, role=None, **service_env(spec)) as client:
            r = await client.get("/auth/whoami", headers=auth_headers(token))
            assert r.json() == {"key_id": key_id, "name": "console", "role": "viewer"}
    assert len(hashes) == 3  # a salt of its own in each database

    again = await imp("risk", "--key-file", str(key_file))
    assert again.exit_code == 0, again.output
    assert "already there in risk" in again.output
    other_role = await imp("risk", "--key-file", str(key_file), role="admin")
    assert other_role.exit_code == 2
    assert "with role viewer, not admin" in other_role.output
    forged = await imp("risk", stdin=f"fpk_{key_id}_{'x' * 43}")
    assert forged.exit_code == 2
    assert "there as another key" in forged.output
    assert await fetchval(dbs["risk"], "SELECT count(*) FROM api_keys") == 1
    assert await fetchval(dbs["risk"], "SELECT role FROM api_keys") == "viewer"
    # the key is never an argument: there is no option or argument that takes it
    as_arg = await imp("risk", token)
    assert as_arg.exit_code == 2
    not_a_key = await imp("risk", stdin="hello")
    assert not_a_key.exit_code == 2
    assert "holds no API key" in not_a_key.output
    # revoked in one database, the key is refused there and still works elsewhere
    revoked = await run_cli(
        ["auth", "revoke-key", key_id, "-s", "risk"], {"DATABASE_URL": dbs["risk"]}
    )
    assert revoked.exit_code == 0, revoked.output
    refused = await imp("risk", "--key-file", str(key_file))
    assert refused.exit_code == 2
    assert "revoked" in refused.output


async def test_generate_key_prints_a_key_and_writes_nothing() -> None:
    result = await run_cli(["auth", "generate-key"], env={})
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert auth.parse_token(token) is not None
    assert (await run_cli(["auth", "generate-key"], env={})).output.strip() != token
