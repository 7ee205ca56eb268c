"""A real HTTP webhook receiver on 127.0.0.1 that verifies signatures like a customer would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from fusion_prime.platform.signing import SIGNATURE_HEADER, SignatureError, verify_header
from tests.harness import local_http_server


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float = field(default_factory=time.time)  # when it arrived, by this clock


@dataclass
class Receiver:
    url: str = ""
    secret: str = ""
    fail_first: int = 0  # answer 500 to this many requests, then 200
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verified_bodies(self) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.requests if r.verified]


@contextmanager
def receiver(**options: Any) -> Iterator[Receiver]:
    state = Receiver(**options)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            header = self.headers.get(SIGNATURE_HEADER, "")
            ok = bool(state.secret) and _verified(state.secret, header, body)
            with state.lock:
                state.requests.append(Received(dict(self.headers.items()), body, ok))
                failing = state.always_fail or len(state.requests) <= state.fail_first
            status = 500 if failing else (200 if ok else 401)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with local_http_server(Handler) as url:
        state.url = f"{url}/hooks"
        yield state


def _verified(secret: str, header: str | None, body: bytes) -> bool:
    """What a subscriber does: recompute, compare in constant time, refuse stale requests."""
    try:
        verify_header(header, body, secret, now=time.time(), tolerance=300)
    except SignatureError:
        return False
    return True
