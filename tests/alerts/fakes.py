"""Real local servers standing in for the providers: an SMTP server (aiosmtpd, with
STARTTLS and AUTH, that can refuse) and one HTTP server for the webhook, Slack and SMS
endpoints (200, 429 with Retry-After, 500, slow answers), both recording what arrived.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fusion_prime.platform.embedded import free_port
from tests.harness import local_http_server

SMTP_USER = "alerts-relay"
SMTP_PASSWORD = "relay-password-not-a-real-one"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Mail:
    rcpt: list[str]
    message: email.message.EmailMessage
    notification_id: str
    at: float = field(default_factory=time.time)  # arrival (the server's clock)


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    ca_file: str = ""
    # address -> SMTP reply to RCPT TO for it (e.g. "550 5.1.1 mailbox unavailable")
    refuse: dict[str, str] = field(default_factory=dict)
    mails: list[Mail] = field(default_factory=list)
    logins: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self) -> dict[str, str]:
        return {
            "ALERTS_SMTP_HOST": self.host,
            "ALERTS_SMTP_PORT": str(self.port),
            "ALERTS_SMTP_USERNAME": SMTP_USER,
            "ALERTS_SMTP_PASSWORD": SMTP_PASSWORD,
            "ALERTS_SMTP_FROM": "alerts@fusion-prime.test",
            "ALERTS_SMTP_CA_FILE": self.ca_file,
            "ALERTS_SMTP_STARTTLS": "true",
        }

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if address in m.rcpt]

    # aiosmtpd handler hooks
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        nid = str(msg.get("X-Fusion-Prime-Notification-Id", ""))
        with self.lock:
            self.mails.append(Mail(list(envelope.rcpt_tos), msg, nid))
        return f"250 OK queued as {uuid.uuid4().hex[:12]}"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == SMTP_USER
            and data.password.decode() == SMTP_PASSWORD
        )
        if ok:
            with self.lock:
                self.logins += 1
        return AuthResult(success=ok)


@contextmanager
def smtp_server(tmp: Path, **options: Any) -> Iterator[SmtpSink]:
    cert, key = make_cert(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sink = SmtpSink(port=free_port(), ca_file=str(cert), **options)
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        server_hostname="localhost",
        tls_context=ctx,
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def key(self) -> str:
        """The idempotency key the sender put on the request (same on every retry)."""
        h = {k.lower(): v for k, v in self.headers.items()}
        return h.get("fusion-prime-delivery-id") or h.get("idempotency-key") or ""

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class HttpFake:
    """Per path: a script of answers used in order (then the last repeats), each
    (status, headers, delay seconds); unknown paths answer 200 after `delay`."""

    url: str = ""
    scripts: dict[str, list[tuple[int, dict[str, str], float]]] = field(default_factory=dict)
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    accepted_keys: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # path -> gate: a request to it waits (after it arrived) until the gate is set
    holds: dict[str, threading.Event] = field(default_factory=dict)
    arrived: list[str] = field(default_factory=list)  # paths, as requests come in

    def hold(self, path: str) -> threading.Event:
        gate = threading.Event()
        with self.lock:
            self.holds[path] = gate
        return gate

    def arrivals(self, path: str) -> int:
        with self.lock:
            return self.arrived.count(path)

    def script(self, path: str, *answers: tuple[int, dict[str, str], float]) -> None:
        with self.lock:
            self.scripts[path] = list(answers)

    def at(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, path: str) -> tuple[int, dict[str, str], float]:
        with self.lock:
            script = self.scripts.get(path)
            if not script:
                return 200, {}, self.delay
            return script.pop(0) if len(script) > 1 else script[0]


_SMS_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")


@contextmanager
def http_server(**options: Any) -> Iterator[HttpFake]:
    state = HttpFake(**options)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with state.lock:
                state.arrived.append(self.path)
                gate = state.holds.get(self.path)
            if gate is not None:
                gate.wait(30)
            status, headers, delay = state.answer(self.path)
            if delay:
                time.sleep(delay)
            req = Request(self.path, dict(self.headers.items()), body, status, time.time())
            with state.lock:
                state.requests.append(req)
                if 200 <= status < 300 and req.key:
                    state.accepted_keys[req.key] = state.accepted_keys.get(req.key, 0) + 1
            payload = b"ok"
            ctype = "text/plain"
            if _SMS_PATH.match(self.path) and 200 <= status < 300:
                status = 201
                # the message sid follows from the idempotency key (a test can know it
                # before the answer); a request without one gets a random sid
                sid = "SM" + (req.key.replace("-", "") or uuid.uuid4().hex)
                payload = json.dumps({"sid": sid, "status": "queued"}).encode()
                ctype = "application/json"
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            return

    with local_http_server(Handler) as url:
        state.url = url
        yield state
