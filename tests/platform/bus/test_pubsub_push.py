"""The Pub/Sub push endpoint over real HTTP, with real push envelopes and signed OIDC tokens.

Tokens are RS256 JWTs signed here with a generated key; its certificate is served from a
local HTTP server whose URL the service gets as FP_PUSH_CERTS_URL (instead of Google's).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from fusion_prime.platform.app import create_app
from fusion_prime.platform.bus.pubsub import encode_push
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.platform.settings import BaseServiceSettings
from tests.conftest import MakeDatabase
from tests.harness import count_rows, fetchval, free_port
from tests.platform.bus.consumerapp import MIGRATIONS, SPEC, SUBSCRIPTION
from tests.platform.bus.helpers import make_events

AUDIENCE = "https://busconsumer.example.run.app/events/pubsub/test-stream-consumer"
PUSH_SA = "pubsub-push@fusion-prime.iam.gserviceaccount.com"
KID = "test-key-1"


def _key_and_cert() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google-certs")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    good_key, good_cert = _key_and_cert()
    other_key, _ = _key_and_cert()
    return {"key": good_key, "cert": good_cert, "other": other_key}


@pytest.fixture(scope="module")
def certs_url(keys: dict[str, Any]) -> Iterator[str]:
    body = json.dumps({KID: keys["cert"]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=600")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs"
    server.shutdown()


def token(key: bytes, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "1234567890",
        "email": PUSH_SA,
        "email_verified": True,
        "sub": "1234567890",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    signer = crypt.RSASigner.from_string(key, key_id=KID)
    return jwt.encode(signer, claims).decode()


@pytest.fixture(params=["production", "development"])
async def service(
    request: pytest.FixtureRequest,
    make_database: MakeDatabase,
    certs_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, str]]:
    """The consumer app with FP_BUS=pubsub served by uvicorn on a real port; tokens are
    verified in every environment (production and development alike)."""
    # the relay's Pub/Sub client is created but has nothing to publish: no credentials
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    db_url = await make_database("busconsumer", MIGRATIONS)
    settings = BaseServiceSettings(
        DATABASE_URL=db_url,
        FP_ENV=request.param,
        FP_BUS="pubsub",
        GCP_PROJECT="fusion-prime-test",
        FP_PUSH_AUDIENCE=AUDIENCE,
        FP_PUSH_SERVICE_ACCOUNT=PUSH_SA,
        FP_PUSH_CERTS_URL=certs_url,
    )
    app = create_app(SPEC, settings, normalise_database_url(db_url, service=SPEC.name))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.025)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", db_url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def push_body(poison: bool = False, attempt: int = 1) -> tuple[dict[str, Any], Any]:
    (event,) = make_events(1, poison=[0] if poison else [])
    path = f"projects/fusion-prime/subscriptions/{SUBSCRIPTION}"
    return encode_push(event, path, message_id="9876543210", attempt=attempt), event


async def post(base: str, body: Any, auth: str | None) -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        if isinstance(body, bytes):
            return await client.post(
                f"/events/pubsub/{SUBSCRIPTION}", content=body, headers=headers
            )
        return await client.post(f"/events/pubsub/{SUBSCRIPTION}", json=body, headers=headers)


async def test_valid_push_commits_then_answers_204_and_redelivery_is_a_no_op(
    service: tuple[str, str], keys: dict[str, Any]
) -> None:
    base, db_url = service
    body, event = push_body()
    auth = f"Bearer {token(keys['key'])}"
    r = await post(base, body, auth)
    assert r.status_code == 204, r.text
    assert await count_rows(db_url, "effects", "event_id = $1", event.id) == 1
    assert await count_rows(db_url, "inbox", "event_id = $1", event.id) == 1
    body["deliveryAttempt"] = 2  # Pub/Sub redelivers the same message
    r = await post(base, body, auth)
    assert r.status_code == 204
    assert await count_rows(db_url, "effects", "event_id = $1", event.id) == 1


async def test_malformed_envelopes_are_400_and_write_nothing(
    service: tuple[str, str], keys: dict[str, Any]
) -> None:
    base, db_url = service
    auth = f"Bearer {token(keys['key'])}"
    good, _ = push_body()
    not_b64 = json.loads(json.dumps(good))
    not_b64["message"]["data"] = "%%% not base64 %%%"
    not_envelope = json.loads(json.dumps(good))
    not_envelope["message"]["data"] = base64.b64encode(b'{"hello": "world"}').decode()
    wrong_attr = json.loads(json.dumps(good))
    wrong_attr["message"]["attributes"]["event_type"] = "something.else"
    no_message = {"subscription": good["subscription"]}
    for body in (b"{not json", no_message, not_b64, not_envelope, wrong_attr):
        r = await post(base, body, auth)
        assert r.status_code == 400, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert await count_rows(db_url, "effects") == 0
    assert await count_rows(db_url, "inbox") == 0


async def test_handler_failure_is_500_with_no_partial_write_then_succeeds_when_fixed(
    service: tuple[str, str], keys: dict[str, Any]
) -> None:
    base, db_url = service
    auth = f"Bearer {token(keys['key'])}"
    body, event = push_body(poison=True)
    r = await post(base, body, auth)
    assert r.status_code == 500
    assert await count_rows(db_url, "effects") == 0
    assert await count_rows(db_url, "inbox") == 0  # the claim rolled back with the effect
    await fetchval(db_url, "INSERT INTO cures VALUES ($1) RETURNING 1", event.subject)
    body["deliveryAttempt"] = 2
    r = await post(base, body, auth)
    assert r.status_code == 204
    assert await count_rows(db_url, "effects", "event_id = $1", event.id) == 1


async def test_missing_or_invalid_token_is_refused(
    service: tuple[str, str], keys: dict[str, Any]
) -> None:
    base, db_url = service
    body, _ = push_body()
    now = int(time.time())
    cases = [
        (None, 401),
        ("Bearer", 401),
        ("Basic dXNlcjpwdw==", 401),
        ("Bearer not-a-jwt", 401),
        (f"Bearer {token(keys['other'])}", 401),  # right kid, wrong signing key
        (f"Bearer {token(keys['key'], aud='https://elsewhere.example')}", 401),
        (f"Bearer {token(keys['key'], iat=now - 7200, exp=now - 3600)}", 401),
        (f"Bearer {token(keys['key'], iss='https://evil.example')}", 401),
        (f"Bearer {token(keys['key'], email='someone@evil.example')}", 403),
        (f"Bearer {token(keys['key'], email_verified=False)}", 403),
    ]
    for auth, status in cases:
        r = await post(base, body, auth)
        assert r.status_code == status, (auth, r.text)
    assert await count_rows(db_url, "effects") == 0
    assert await count_rows(db_url, "inbox") == 0


async def test_unknown_subscription_is_404(service: tuple[str, str], keys: dict[str, Any]) -> None:
    base, _ = service
    body, _ = push_body()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        r = await client.post(
            "/events/pubsub/not-mine",
            json=body,
            headers={"Authorization": f"Bearer {token(keys['key'])}"},
        )
    assert r.status_code == 404


async def test_the_push_endpoint_does_not_exist_with_the_postgres_bus(
    make_database: MakeDatabase,
) -> None:
    from tests.harness import asgi_client

    db_url = await make_database("busconsumer", MIGRATIONS)
    body, _ = push_body()
    async with asgi_client(SPEC, db_url) as client:  # FP_BUS=postgres (the default)
        r = await client.post(f"/events/pubsub/{SUBSCRIPTION}", json=body)
    assert r.status_code == 404
    assert await count_rows(db_url, "effects") == 0
    assert await count_rows(db_url, "inbox") == 0


async def test_a_pubsub_consumer_refuses_to_start_without_push_authentication_in_any_env(
    make_database: MakeDatabase, log_dir: Any
) -> None:
    import subprocess

    from tests.harness import ServiceProcess

    db_url = await make_database("busconsumer", MIGRATIONS)
    env = {"FP_BUS": "pubsub", "GCP_PROJECT": "fusion-prime-test", "FP_ENV": "development"}
    proc = ServiceProcess.for_module(
        "tests.platform.bus.consumerapp", db_url, log_dir, extra_env=env
    )
    proc.start()
    try:
        code = await asyncio.to_thread(proc.wait_exit, 20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        pytest.fail("the service started and served push requests without authentication")
    assert code == 2
    lines = [x for x in proc.log_text().splitlines() if "FP_PUSH_AUDIENCE" in x]
    assert len(lines) == 1, proc.log_text()
