"""CONSOLE_SERVERLESS_AUTH: the console process sends a Google ID token for each service
(Cloud Run's IAM check) in X-Serverless-Authorization, its API key still in Authorization.

A local HTTP server stands in for the metadata server (GCE_METADATA_HOST/GCE_METADATA_IP,
honoured by google-auth) and another for the five services (each under a path of its
own, so each has its own URL and so its own audience); the console is the real process.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

from fusion_prime.console.settings import SERVICES
from fusion_prime.platform.embedded import free_port
from tests.harness import REPO_ROOT, local_http_server

CONSOLE_KEY = "fpk_console_read_key"
USER_KEY = "fpk_user_signin_key"
# google-auth refreshes a token within 3 min 45 s of its expiry: this audience's tokens
# are always that close, so every request needs a new one
SHORT_LIVED = "alerts"
ACCOUNT = "fp-console-run@p.iam.gserviceaccount.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class Metadata(BaseHTTPRequestHandler):
    """The metadata server's ping and identity endpoint."""

    issued: ClassVar[list[str]] = []  # audiences, one per token issued
    lock = threading.Lock()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, b"missing Metadata-Flavor")
        elif url.path == "/":
            self._send(200, b"ok")
        elif url.path == "/computeMetadata/v1/instance/service-accounts/default/":
            info = {"email": ACCOUNT, "aliases": ["default"], "scopes": []}
            self._send(200, json.dumps(info).encode(), "application/json")
        elif url.path == "/computeMetadata/v1/instance/service-accounts/default/identity":
            q = parse_qs(url.query)
            audience = q["audience"][0]
            assert q["format"] == ["full"]
            with self.lock:
                self.issued.append(audience)
                n = len(self.issued)
            life = 60 if audience.endswith("/" + SHORT_LIVED) else 3600
            now = int(time.time())
            claims = {"aud": audience, "iss": "https://accounts.google.com", "iat": now,
                      "exp": now + life, "email": ACCOUNT, "n": n}  # fmt: skip
            header = _b64(b'{"alg":"RS256","typ":"JWT"}')
            token = f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'signature')}"
            self._send(200, token.encode())
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Services(BaseHTTPRequestHandler):
    """The five services: records every request's path and headers, answers the reads
    behind the sign-in and the overview."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []  # (service, path, headers)
    lock = threading.Lock()

    def do_GET(self) -> None:
        m = re.match(r"^/svc/([a-z]+)(/[^?]*)", self.path)
        assert m, self.path
        service, path = m[1], m[2]
        with self.lock:
            self.seen.append((service, path, dict(self.headers.items())))
        body: Any
        if path == "/auth/whoami":
            body = {"key_id": "0123456789ab", "name": "tester", "role": "viewer"}
        elif path == "/health/ready":
            body = {"status": "ok", "database": {"database": f"fp_{service}"}}
        elif path == "/stats":
            body = {"accounts": 0, "accounts_with_positions": 0, "tiers": {}}
        elif path in ("/bus/subscriptions", "/cases", "/notifications"):
            body = {"items": [], "next_cursor": None}
        else:
            body = {"detail": "not here"}
        data = json.dumps(body).encode()
        self.send_response(404 if "detail" in body else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def console(services: str, metadata: str, **extra: str) -> Iterator[httpx.Client]:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSOLE_", "DATABASE_URL", "GCE_", "GOOGLE_"))
    }
    host = metadata.removeprefix("http://")
    env.update(
        CONSOLE_SESSION_KEY="s" * 40, CONSOLE_COOKIE_SECURE="false", CONSOLE_API_KEY=CONSOLE_KEY,
        CONSOLE_AGGREGATE_TTL="0", GCE_METADATA_HOST=host, GCE_METADATA_IP=host,
        **{f"CONSOLE_{s.upper()}_URL": f"{services}/svc/{s}" for s in SERVICES}, **extra,
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.cli", "serve", "console", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/health/live").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sign_in(client: httpx.Client) -> httpx.Response:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
    assert token
    return client.post("/login", data={"api_key": USER_KEY, "csrf_token": token[1]})


def test_each_service_gets_an_id_token_for_its_own_url_beside_the_api_key() -> None:
    Metadata.issued, Services.seen = [], []
    with local_http_server(Metadata) as metadata, local_http_server(Services) as services:
        with console(services, metadata, CONSOLE_SERVERLESS_AUTH="true") as client:
            assert sign_in(client).status_code == 303
            for _ in range(3):
                page = client.get("/")
                assert page.status_code == 200
                assert 'data-ready="yes"' in page.text
        seen = list(Services.seen)
        issued = list(Metadata.issued)
    assert {s for s, _, _ in seen} == set(SERVICES)
    for service, path, headers in seen:
        audience = f"{services}/svc/{service}"
        scheme, token = headers["X-Serverless-Authorization"].split(" ", 1)
        assert scheme == "Bearer"
        assert _claims(token)["aud"] == audience  # Cloud Run checks it is the service's URL
        # the API key stays where the services read it
        key = USER_KEY if path == "/auth/whoami" else CONSOLE_KEY
        assert headers["Authorization"] == f"Bearer {key}"
    # cached until near expiry: one token per long-lived audience for every request made
    # with it; the short-lived audience needed a new one for each of its requests
    for service in SERVICES:
        audience = f"{services}/svc/{service}"
        used = [h for s, _, h in seen if s == service]
        if service == SHORT_LIVED:
            assert issued.count(audience) == len(used) >= 3
            tokens = {h["X-Serverless-Authorization"] for h in used}
            assert len(tokens) == len(used)
        else:
            assert len(used) >= 3
            assert issued.count(audience) == 1
    assert set(issued) == {f"{services}/svc/{s}" for s in SERVICES}


def test_without_the_setting_no_id_token_is_asked_for_or_sent() -> None:
    Metadata.issued, Services.seen = [], []
    with local_http_server(Metadata) as metadata, local_http_server(Services) as services:
        with console(services, metadata) as client:
            assert sign_in(client).status_code == 303
            assert client.get("/").status_code == 200
        seen = list(Services.seen)
    assert seen
    assert not any("X-Serverless-Authorization" in h for _, _, h in seen)
    assert all(h["Authorization"].startswith("Bearer fpk_") for _, _, h in seen)
    assert Metadata.issued == []


def test_no_identity_to_sign_with_is_said_on_the_page() -> None:
    """ID tokens on, but no metadata server answers: sign-in names the cause, and no
    request goes out without its token."""
    Services.seen = []
    with local_http_server(Services) as services:
        dead = f"http://127.0.0.1:{free_port()}"
        with console(
            services, dead, CONSOLE_SERVERLESS_AUTH="true", GCE_METADATA_DETECT_RETRIES="1"
        ) as client:
            page = sign_in(client)
    assert page.status_code == 401
    assert "no ID token for settlement" in page.text
    assert Services.seen == []
