"""The chain side of the relayer: JSON-RPC to an EVM node and escrow log decoding.

JSON-RPC goes through httpx (one client, batch calls, our own classification of errors:
the relayer must tell "retry later" from "ask for a smaller range"); logs are decoded
against the committed ABI of contracts/EscrowFactory.sol (read and hashed with web3.py)
by eth_abi (web3's codec) with one tuple decoder per event type, built once.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import httpx
from eth_abi.decoding import ContextFramesBytesIO, TupleDecoder
from eth_abi.registry import registry as ABI_REGISTRY
from web3 import Web3

from fusion_prime.platform.observability import get_logger

log = get_logger(__name__)

ARTIFACT = Path(__file__).parent / "contracts" / "EscrowFactory.json"
# Namespace of the relayer's envelope ids: uuid5 of the log's chain coordinates and block
# hash, so a re-read of the same log is the same envelope (the inbox drops it) and a log
# re-included in another block after a reorg is a new one.
EVENT_ID_NAMESPACE = uuid.UUID("8b8f9a52-3c0e-4d61-9f1e-6d1c1e0c5a11")


class RpcError(Exception):
    """The node answered with a JSON-RPC error that retrying will not fix as such."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: {code}: {message}")
        self.code = code
        self.message = message


class RangeTooLargeError(RpcError):
    """The node refused an eth_getLogs range or result size: ask for a smaller range."""


class TransientRpcError(Exception):
    """429, 5xx, timeouts, refused connections: the same call may succeed later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# How providers word "your range/result is too large" (Infura -32005, Alchemy, BlockPI,
# QuickNode, geth's "query returned more than 10000 results", 413 payloads).
_RANGE_WORDS = (
    "block range",
    "range too large",
    "range is too large",
    "exceeds limit",
    "exceed maximum",
    "more than",
    "too many",
    "limit exceeded",
    "response size",
    "query timeout",
)


def _is_range_error(code: int | None, message: str) -> bool:
    text = message.lower()
    return code == -32005 or any(word in text for word in _RANGE_WORDS)


class JsonRpc:
    """An EVM node over HTTP JSON-RPC with bounded, backed-off retries of transient errors."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._url = url
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.errors = 0  # transient failures seen (for metrics and tests)

    async def close(self) -> None:
        """Close the connections; a later call opens new ones (a restarted loop)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            )
        return self._client

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        (result,) = await self.batch([(method, params)])
        return result

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; results in call order."""
        if not calls:
            return []
        body: Any = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in enumerate(calls)
        ]
        if len(calls) == 1:
            body = body[0]
        delay = self.backoff_base
        for attempt in range(1, self.attempts + 1):
            try:
                return self._results(calls, await self._post(body))
            except TransientRpcError as exc:
                self.errors += 1
                if attempt == self.attempts:
                    raise
                wait = min(exc.retry_after or delay, self.backoff_max)
                log.warning(
                    "rpc call failed, retrying",
                    method=calls[0][0],
                    attempt=attempt,
                    error=str(exc),
                    retry_in=round(wait, 2),
                )
                await asyncio.sleep(wait * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.backoff_max)
        raise AssertionError("unreachable")

    async def _post(self, body: Any) -> Any:
        try:
            response = await self._http().post(self._url, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientRpcError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after", "")
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
            raise TransientRpcError(f"HTTP {response.status_code}", wait)
        if response.status_code == 413:
            raise RangeTooLargeError("batch", 413, "payload too large")
        if response.status_code >= 400:
            raise RpcError("batch", response.status_code, response.text[:200])
        try:
            return response.json()
        except ValueError as exc:
            raise TransientRpcError(f"invalid JSON from node: {exc}") from exc

    @staticmethod
    def _results(calls: Sequence[tuple[str, Sequence[Any]]], payload: Any) -> list[Any]:
        items = payload if isinstance(payload, list) else [payload]
        by_id = {item.get("id"): item for item in items if isinstance(item, dict)}
        out = []
        for i, (method, _) in enumerate(calls):
            item = by_id.get(i)
            if item is None:
                raise TransientRpcError(f"{method}: no answer in the node's response")
            error = item.get("error")
            if error is not None:
                code = error.get("code") if isinstance(error, dict) else None
                message = str(error.get("message", error) if isinstance(error, dict) else error)
                if code == 429 or "rate limit" in message.lower():
                    raise TransientRpcError(f"{method}: {code}: {message}")
                if method == "eth_getLogs" and _is_range_error(code, message):
                    raise RangeTooLargeError(method, code, message)
                raise RpcError(method, code, message)
            out.append(item.get("result"))
        return out


@dataclass(frozen=True)
class Header:
    number: int
    hash: str
    parent_hash: str
    timestamp: int


def header(raw: dict[str, Any]) -> Header:
    return Header(
        int(raw["number"], 16),
        raw["hash"].lower(),
        raw["parentHash"].lower(),
        int(raw["timestamp"], 16),
    )


@dataclass(frozen=True)
class DecodedLog:
    """One escrow log as the envelope settlement consumes on settlement.events.v1."""

    event_id: uuid.UUID
    event_type: str
    escrow: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    data: dict[str, Any]


# ABI event name -> (envelope type, {abi argument: data field})
EVENTS: dict[str, tuple[str, dict[str, str]]] = {
    "EscrowDeployed": (
        "escrow.deployed",
        {
            "payer": "payer",
            "payee": "payee",
            "arbiter": "arbiter",
            "asset": "asset",
            "decimals": "decimals",
            "amount": "amount",
            "releaseDelay": "release_delay",
            "approvalsRequired": "approvals_required",
        },
    ),
    "EscrowApproved": ("escrow.approved", {"approver": "approver"}),
    "EscrowReleased": ("escrow.released", {}),
    "EscrowRefunded": ("escrow.refunded", {}),
    "EscrowArbiterChanged": ("escrow.arbiter_changed", {"newArbiter": "new_arbiter"}),
    "EscrowDisputed": ("escrow.disputed", {"by": "disputed_by"}),
}


@dataclass(frozen=True)
class _EventAbi:
    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type) in topic order
    data: tuple[tuple[str, str], ...]  # (name, type) of the data part

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.indexed + self.data)

    @cached_property
    def types(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.indexed + self.data)

    @cached_property
    def wire_types(self) -> tuple[str, ...]:
        """The types handed to the decoder: an address is ABI-encoded as a uint160, and
        decoding it as one (then formatting it as lowercase hex, which is what is
        published) skips the codec's EIP-55 checksum, a keccak per address that was most
        of the relayer's decoding time."""
        return tuple("uint160" if t == "address" else t for t in self.types)

    @cached_property
    def type_of(self) -> dict[str, str]:
        return dict(self.indexed + self.data)

    @cached_property
    def decoder(self) -> TupleDecoder:
        """eth_abi's decoder of this event's argument tuple, built once (the codec's
        `decode` validates its arguments and looks the decoder up on every call)."""
        return ABI_REGISTRY.get_tuple_decoder(*self.wire_types)

    @cached_property
    def fields(self) -> tuple[tuple[str, str, str], ...]:
        """(ABI argument, data field, ABI type) of what the envelope carries."""
        _, mapping = EVENTS[self.name]
        return tuple((arg, field, self.type_of[arg]) for arg, field in mapping.items())


_STATIC = re.compile(r"^(address|bool|u?int(8|16|32|64|128|256)|bytes([1-9]|[12][0-9]|3[0-2]))$")


@cache
def artifact() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return loaded


@cache
def _events_by_topic() -> dict[str, _EventAbi]:
    out = {}
    for item in artifact()["EscrowFactory"]["abi"]:
        if item.get("type") != "event" or item["name"] not in EVENTS:
            continue
        inputs = item["inputs"]
        signature = f"{item['name']}({','.join(i['type'] for i in inputs)})"
        topic0 = "0x" + Web3.keccak(text=signature).hex().removeprefix("0x")
        out[topic0] = _EventAbi(
            item["name"],
            tuple((i["name"], i["type"]) for i in inputs if i["indexed"]),
            tuple((i["name"], i["type"]) for i in inputs if not i["indexed"]),
        )
    dynamic = [f"{e.name}.{t}" for e in out.values() for t in e.types if not _STATIC.match(t)]
    if dynamic:  # decode_log relies on static arguments only
        raise RuntimeError(f"{ARTIFACT}: escrow events with dynamic arguments: {dynamic}")
    if {e.name for e in out.values()} != set(EVENTS):
        raise RuntimeError(f"{ARTIFACT} lacks some escrow events: {sorted(EVENTS)}")
    return out


def event_topics() -> list[str]:
    return sorted(_events_by_topic())


def _value(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return f"0x{value:040x}"  # decoded as uint160
    if abi_type == "uint256":
        return str(value)  # base units as a digit string: JSON numbers lose precision
    return value


def decode_log(chain_id: int, raw: dict[str, Any]) -> DecodedLog | None:
    """The envelope data of one factory log, or None for a log that is not an escrow event."""
    topics = raw.get("topics") or []
    event = _events_by_topic().get(topics[0].lower()) if topics else None
    if event is None:
        return None
    if len(topics) != len(event.indexed) + 1:
        raise ValueError(f"{event.name} log with {len(topics)} topics")
    # every argument is a static type (checked when the ABI is read), so the indexed
    # topics followed by the data are the ABI encoding of the whole argument tuple: one
    # decoder call per log instead of one per topic plus one for the data
    encoded = bytes.fromhex("".join(t[2:] for t in topics[1:]) + raw["data"][2:])
    values = event.decoder(ContextFramesBytesIO(encoded))  # type: ignore[no-untyped-call]
    args = dict(zip(event.names, values, strict=True))
    event_type = EVENTS[event.name][0]
    block_hash = raw["blockHash"].lower()
    tx_hash = raw["transactionHash"].lower()
    log_index = int(raw["logIndex"], 16)
    block_number = int(raw["blockNumber"], 16)
    escrow = _value("address", args["escrow"])
    data: dict[str, Any] = {
        "chain_id": chain_id,
        "tx_hash": tx_hash,
        "log_index": log_index,
        "block_number": block_number,
        "block_hash": block_hash,
        "escrow": escrow,
    }
    for arg, field, abi_type in event.fields:
        data[field] = _value(abi_type, args[arg])
    correlation = args.get("correlationId", b"")
    if correlation and any(correlation):
        data["correlation_id"] = str(uuid.UUID(bytes=bytes(correlation)))
    event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"{chain_id}:{block_hash}:{tx_hash}:{log_index}")
    return DecodedLog(
        event_id, event_type, escrow, block_number, block_hash, tx_hash, log_index, data
    )
