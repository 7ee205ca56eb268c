"""The escrow contracts on a local anvil, a faulty JSON-RPC proxy, and the relayer's drain.

`EscrowChain` deploys the committed build (src/fusion_prime/settlement/contracts) and
drives escrows through web3 from anvil's unlocked accounts. `FaultyProxy` is a real HTTP
server in front of anvil that can answer 429/503, refuse wide eth_getLogs ranges the way
providers do (-32005), or go away and come back on the same port.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.settlement.chain import JsonRpc, artifact
from fusion_prime.settlement.relayer import Relayer
from tests.evm import Anvil
from tests.harness import fetch
from tests.settlement.factory import deliver

CHAIN_ID = 31337  # anvil's default
ETH = "0x" + "00" * 20


class EscrowChain:
    def __init__(self, node: Anvil) -> None:
        from web3 import HTTPProvider, Web3

        self.node = node
        self.w3 = Web3(HTTPProvider(node.url))
        self.accounts = self.w3.eth.accounts
        built = artifact()
        factory = self.w3.eth.contract(
            abi=built["EscrowFactory"]["abi"], bytecode=built["EscrowFactory"]["bytecode"]
        )
        receipt = self._wait(factory.constructor().transact({"from": self.accounts[0]}))
        self.factory = self.w3.eth.contract(
            address=receipt["contractAddress"], abi=built["EscrowFactory"]["abi"]
        )
        self.deploy_block = receipt["blockNumber"]
        self._escrow_abi = built["Escrow"]["abi"]

    @property
    def address(self) -> str:
        return str(self.factory.address).lower()

    def _wait(self, tx: Any) -> Any:
        return self.w3.eth.wait_for_transaction_receipt(tx, timeout=30)

    def create(
        self,
        *,
        payer: int = 0,
        payee: int = 1,
        arbiter: int = 2,
        amount: int = 10**15,
        required: int = 2,
        correlation: uuid.UUID | None = None,
    ) -> str:
        cid = correlation.bytes if correlation else b"\x00" * 16
        fn = self.factory.functions.create(
            self.accounts[payee], self.accounts[arbiter], ETH, amount, 0, required, cid
        )
        receipt = self._wait(fn.transact({"from": self.accounts[payer], "value": amount}))
        (event,) = self.factory.events.EscrowDeployed().process_receipt(receipt)
        return str(event["args"]["escrow"]).lower()

    def escrow(self, address: str) -> Any:
        return self.w3.eth.contract(
            address=self.w3.to_checksum_address(address), abi=self._escrow_abi
        )

    def act(self, address: str, action: str, who: int, *args: Any, cid: bytes = b"\0" * 16) -> Any:
        fn = getattr(self.escrow(address).functions, action)(*args, cid)
        return self._wait(fn.transact({"from": self.accounts[who]}))

    def mine(self, blocks: int) -> None:
        # anvil_mine of many blocks can outlast Anvil.rpc's 10 s on a loaded machine
        body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [hex(blocks)]}
        r = httpx.post(self.node.url, timeout=300, json=body)
        assert "error" not in r.json(), r.text

    def head(self) -> int:
        return int(self.node.rpc("eth_blockNumber"), 16)


def relayer(engine: AsyncEngine, url: str, chain: EscrowChain, **kw: Any) -> Relayer:
    rpc = JsonRpc(url, timeout=kw.pop("timeout", 5.0), backoff_base=0.02, backoff_max=0.2)
    kw.setdefault("confirmations", 2)
    return Relayer(
        engine,
        rpc,
        chain_id=CHAIN_ID,
        factory=chain.address,
        start_block=chain.deploy_block,
        poll_interval=0.05,
        **kw,
    )


async def outbox_events(db: str) -> list[Envelope]:
    rows = await fetch(
        db, "SELECT envelope FROM outbox WHERE topic = 'settlement.events.v1' ORDER BY seq"
    )
    return [Envelope.model_validate(json.loads(r["envelope"])) for r in rows]


async def drain(engine: AsyncEngine, db: str) -> list[Envelope]:
    """What the bus does with the relayer's outbox rows: every settlement.events.v1 event
    to settlement's consumer (consume_batch + handler, inbox de-duplication), in order."""
    events = await outbox_events(db)
    for i in range(0, len(events), 500):
        await deliver(engine, events[i : i + 500])
    return events


@dataclass
class FaultyProxy:
    """A JSON-RPC HTTP proxy to `target` with injectable faults."""

    target: str
    port: int = 0
    fail_next: int = 0  # answer this many requests with `fail_status`
    fail_status: int = 429
    max_range: int | None = None  # eth_getLogs wider than this: -32005 like Infura
    ranges: list[tuple[int, int]] = field(default_factory=list)  # accepted getLogs ranges
    requests: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultyProxy:
        proxy = self
        client = httpx.Client(timeout=10)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, payload = proxy._handle(client, json.loads(body))
                raw = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The node goes away: connections are refused until `start()` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, client: httpx.Client, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"error": "injected"}
        calls = body if isinstance(body, list) else [body]
        for call in calls:
            if call["method"] == "eth_getLogs":
                frm = int(call["params"][0]["fromBlock"], 16)
                to = int(call["params"][0]["toBlock"], 16)
                if self.max_range is not None and to - frm + 1 > self.max_range:
                    return 200, {
                        "jsonrpc": "2.0",
                        "id": call["id"],
                        "error": {"code": -32005, "message": "query exceeds limit of blocks"},
                    }
                with self._lock:
                    self.ranges.append((frm, to))
        r = client.post(self.target, json=body)
        return r.status_code, r.json()


@contextlib.contextmanager
def faulty_proxy(target: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(target).start()
    try:
        yield proxy
    finally:
        proxy.stop()
