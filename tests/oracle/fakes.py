"""A real local HTTP server answering like Coinbase Exchange, Kraken, Binance and CoinGecko.

Response shapes follow the public docs (see docs/oracle.md): Coinbase ticker with string
numbers and a nanosecond RFC 3339 `time`, Kraken `{"error":[],"result":{PAIR:{"c":[...]}}}`,
Binance `{"symbol","price"}`, CoinGecko `{"id":{"usd":<number>,"last_updated_at":<unix>}}`,
and each API's error shapes. Each kind can be switched to an error, garbage, a slow answer.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

KINDS = ("coinbase", "kraken", "binance", "coingecko", "chainlink")
# Kraken answers with its own pair names
KRAKEN_NAMES = {"XBTUSD": "XXBTZUSD", "ETHUSD": "XETHZUSD"}


@dataclass
class Behaviour:
    mode: str = "ok"  # ok | error | garbage | zero | negative | nonfinite | stale | future
    delay: float = 0.0
    age: float = 0.0  # seconds the source's own time lags behind now
    jitter: tuple[float, float] | None = None  # a random delay in [low, high] per request

    def wait(self) -> None:
        if self.jitter is not None:
            time.sleep(random.uniform(*self.jitter))
        elif self.delay:
            time.sleep(self.delay)


@dataclass
class FakeState:
    prices: dict[tuple[str, str], str] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=lambda: {k: Behaviour() for k in KINDS})
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    rpc_upstream: str | None = None  # POSTs (JSON-RPC) are forwarded here, after the delay

    def set(self, kind: str, symbol: str, price: str) -> None:
        with self.lock:
            self.prices[(kind, symbol)] = price

    def set_all(self, symbols: dict[str, str], price: str) -> None:
        """`symbols`: kind -> symbol of one instrument, all at `price`."""
        for kind, symbol in symbols.items():
            self.set(kind, symbol, price)

    def mode(
        self,
        kind: str,
        mode: str,
        delay: float = 0.0,
        age: float = 0.0,
        jitter: tuple[float, float] | None = None,
    ) -> None:
        with self.lock:
            self.behaviour[kind] = Behaviour(mode, delay, age, jitter)


def _source_time(b: Behaviour) -> float:
    if b.mode == "future":
        return time.time() + 600
    return time.time() - (3600 if b.mode == "stale" else b.age)


def _value(b: Behaviour, price: str) -> str:
    return {"zero": "0", "negative": "-" + price, "nonfinite": "NaN"}.get(b.mode, price)


def coinbase(b: Behaviour, symbol: str, price: str | None) -> tuple[int, str]:
    if b.mode == "error" or price is None:
        return 404, json.dumps({"message": "NotFound"})
    at = datetime.fromtimestamp(_source_time(b), UTC)
    v = _value(b, price)
    body = {
        "ask": v,
        "bid": v,
        "volume": "4916.94797396",
        "trade_id": 1040406588,
        "price": v,
        "size": "0.00782662",
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "911Z",  # nanoseconds, as Coinbase
        "rfq_volume": "31.625279",
    }
    return 200, json.dumps(body)


def kraken(b: Behaviour, symbol: str, price: str | None) -> tuple[int, str]:
    if b.mode == "error" or price is None:
        return 200, json.dumps({"error": ["EQuery:Unknown asset pair"]})
    v = _value(b, price)
    ticker = {
        "a": [v, "1", "1.000"],
        "b": [v, "2", "2.000"],
        "c": [v, "0.0100"],
        "v": ["1200.1", "3500.2"],
        "p": [v, v],
        "t": [1520, 4310],
        "l": [v, v],
        "h": [v, v],
        "o": v,
    }
    return 200, json.dumps({"error": [], "result": {KRAKEN_NAMES.get(symbol, symbol): ticker}})


def binance(b: Behaviour, symbol: str, price: str | None) -> tuple[int, str]:
    if b.mode == "error" or price is None:
        return 400, json.dumps({"code": -1121, "msg": "Invalid symbol."})
    return 200, json.dumps({"symbol": symbol, "price": _value(b, price)})


def coingecko(b: Behaviour, symbol: str, price: str | None) -> tuple[int, str]:
    if b.mode == "error":
        return 429, json.dumps(
            {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit."}}
        )
    if price is None:
        return 200, "{}"
    v = _value(b, price)
    # a JSON number, as CoinGecko sends it (NaN is what a broken encoder would write)
    return 200, f'{{"{symbol}":{{"usd":{v},"last_updated_at":{int(_source_time(b))}}}}}'


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if url.path.startswith("/products/") and len(parts) == 3 and parts[2] == "ticker":
            kind, symbol, render = "coinbase", parts[1], coinbase
        elif url.path == "/0/public/Ticker":
            kind, symbol, render = "kraken", q.get("pair", ""), kraken
        elif url.path == "/api/v3/ticker/price":
            kind, symbol, render = "binance", q.get("symbol", ""), binance
        elif url.path == "/api/v3/simple/price":
            kind, symbol, render = "coingecko", q.get("ids", ""), coingecko
        else:
            self._send(404, '{"message":"no such route"}')
            return
        state = self.server.state
        with state.lock:
            state.requests[kind] += 1
            b = state.behaviour[kind]
            price = state.prices.get((kind, symbol))
        b.wait()
        if b.mode == "garbage":
            self._send(200, "<html><body>502 Bad Gateway</body></html>", "text/html")
            return
        status, body = render(b, symbol, price)
        self._send(status, body)

    def do_POST(self) -> None:
        """A delaying proxy in front of a JSON-RPC node (the Chainlink source's latency)."""
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with state.lock:
            state.requests["chainlink"] += 1
            b = state.behaviour["chainlink"]
        b.wait()
        if state.rpc_upstream is None:
            self._send(404, '{"message":"no upstream"}')
            return
        req = urllib.request.Request(
            state.rpc_upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            self._send(r.status, r.read().decode())

    def _send(self, status: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a round opens hundreds of connections at once
    state: FakeState


@dataclass
class FakeApis:
    url: str
    state: FakeState

    def env(self) -> dict[str, str]:
        """The oracle settings that point every HTTP source at this server."""
        return {
            "ORACLE_COINBASE_URL": self.url,
            "ORACLE_KRAKEN_URL": self.url,
            "ORACLE_BINANCE_URL": self.url,
            "ORACLE_COINGECKO_URL": self.url,
        }


@contextlib.contextmanager
def fake_apis() -> Iterator[FakeApis]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = FakeState()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeApis(f"http://127.0.0.1:{server.server_address[1]}", server.state)
    finally:
        server.shutdown()
        server.server_close()
