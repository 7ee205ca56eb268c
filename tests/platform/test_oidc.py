"""Service-to-service callers with Google-signed ID tokens (OIDC), verified by the bus push
endpoint's verifier against a local certificate server (never the internet)."""

from __future__ import annotations

import time
from typing import Any

from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import asgi_client, auth_headers, fetchval
from tests.platform.bus.test_pubsub_push import AUDIENCE, certs_url, keys, token

__all__ = ["certs_url", "keys"]  # the module's fixtures, used here

CALLER = "alerts-runtime@fusion-prime.iam.gserviceaccount.com"
READER = "console-runtime@fusion-prime.iam.gserviceaccount.com"
PARAMS = {"ltv": "0.7", "liquidation_threshold": "0.8", "liquidation_bonus": "0.05",
          "max_price_age_seconds": 60, "decimals": 18}  # fmt: skip


async def test_allowed_service_accounts_call_with_their_role(
    make_database: MakeDatabase, keys: dict[str, Any], certs_url: str
) -> None:
    spec = load_spec("risk")
    db = await make_database(spec.name, spec.migrations_dir)
    env = {
        "FP_AUTH_OIDC_AUDIENCE": AUDIENCE,
        "FP_AUTH_SERVICE_ACCOUNTS": f"{CALLER}=risk_manager,{READER}=viewer",
        "FP_PUSH_CERTS_URL": certs_url,
    }
    async with asgi_client(spec, db, role=None, **env) as client:
        caller = auth_headers(token(keys["key"], email=CALLER))
        r = await client.get("/auth/whoami", headers=caller)
        assert r.status_code == 200, r.text
        assert r.json() == {"key_id": f"oidc:{CALLER}", "name": CALLER, "role": "risk_manager"}
        r = await client.put("/risk-parameters/ETH", json=PARAMS, headers=caller)
        assert r.status_code == 201, r.text
        by = await fetchval(db, "SELECT created_by FROM risk_parameters WHERE asset = 'ETH'")
        assert by == f"{CALLER} [oidc:{CALLER}]"
        reader = auth_headers(token(keys["key"], email=READER))
        assert (await client.get("/risk-parameters", headers=reader)).status_code == 200
        r = await client.put("/risk-parameters/ETH", json=PARAMS, headers=reader)
        assert r.status_code == 403
        refused = {
            "wrong audience": token(keys["key"], email=CALLER, aud="https://other.example"),
            "unknown signer": token(keys["other"], email=CALLER),
            "not allowed": token(keys["key"], email="intruder@evil.example"),
            "email not verified": token(keys["key"], email=CALLER, email_verified=False),
            "expired": token(
                keys["key"], email=CALLER, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
            ),
            "not Google": token(keys["key"], email=CALLER, iss="https://evil.example"),
        }
        for why, bad in refused.items():
            r = await client.get("/auth/whoami", headers=auth_headers(bad))
            assert r.status_code == 401, (why, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer "), why
        assert await fetchval(db, "SELECT count(*) FROM risk_parameters") == 1
