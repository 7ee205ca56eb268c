"""decode_log (one prebuilt eth_abi tuple decoder per event type) against web3's own event
decoder (`contract.events.X().process_log`) on logs built from the committed ABI."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from web3 import Web3

from fusion_prime.settlement.chain import EVENT_ID_NAMESPACE, EVENTS, artifact, decode_log

CHAIN_ID = 31337
W3 = Web3()
FACTORY = W3.eth.contract(abi=artifact()["EscrowFactory"]["abi"])
ABI_EVENTS = {i["name"]: i for i in artifact()["EscrowFactory"]["abi"] if i.get("type") == "event"}


def _value(abi_type: str, rng: random.Random) -> Any:
    if abi_type == "address":
        return Web3.to_checksum_address(rng.randbytes(20))
    if abi_type == "bytes16":
        return rng.randbytes(16)
    bits = int(abi_type.removeprefix("uint"))
    return rng.choice([0, 1, 2**bits - 1, rng.getrandbits(bits)])


def _log(name: str, args: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A raw eth_getLogs entry of event `name` with `args`, ABI-encoded by web3's codec."""
    inputs = ABI_EVENTS[name]["inputs"]
    signature = f"{name}({','.join(i['type'] for i in inputs)})"
    indexed = [i for i in inputs if i["indexed"]]
    plain = [i for i in inputs if not i["indexed"]]
    topics = ["0x" + Web3.keccak(text=signature).hex().removeprefix("0x")]
    topics += ["0x" + W3.codec.encode([i["type"]], [args[i["name"]]]).hex() for i in indexed]
    data = W3.codec.encode([i["type"] for i in plain], [args[i["name"]] for i in plain])
    return {
        "address": "0x" + "ab" * 20,
        "topics": topics,
        "data": "0x" + data.hex(),
        "blockNumber": hex(rng.randrange(1, 10**8)),
        "blockHash": "0x" + rng.randbytes(32).hex(),
        "transactionHash": "0x" + rng.randbytes(32).hex(),
        "transactionIndex": "0x0",
        "logIndex": hex(rng.randrange(0, 1000)),
        "removed": False,
    }


def _web3_args(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """web3's decoding of the log: (event name, arguments)."""
    topic0 = raw["topics"][0]
    for name in EVENTS:
        event = getattr(FACTORY.events, name)()
        inputs = ABI_EVENTS[name]["inputs"]
        sig = f"{name}({','.join(i['type'] for i in inputs)})"
        if "0x" + Web3.keccak(text=sig).hex().removeprefix("0x") == topic0:
            decoded = event.process_log(
                {
                    **raw,
                    "topics": [bytes.fromhex(t[2:]) for t in raw["topics"]],
                    "data": bytes.fromhex(raw["data"][2:]),
                    "blockNumber": int(raw["blockNumber"], 16),
                    "logIndex": int(raw["logIndex"], 16),
                    "transactionIndex": 0,
                    "blockHash": bytes.fromhex(raw["blockHash"][2:]),
                    "transactionHash": bytes.fromhex(raw["transactionHash"][2:]),
                }
            )
            return name, dict(decoded["args"])
    raise AssertionError(f"no event for topic {topic0}")


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_decode_log_matches_web3_event_decoding_for_every_event_type(name: str) -> None:
    rng = random.Random(name)
    inputs = ABI_EVENTS[name]["inputs"]
    for round_ in range(50):
        args = {i["name"]: _value(i["type"], rng) for i in inputs}
        if round_ % 2 == 0:
            args["correlationId"] = b"\0" * 16  # no command: no correlation_id field
        raw = _log(name, args, rng)
        decoded = decode_log(CHAIN_ID, raw)
        assert decoded is not None
        web3_name, web3_args = _web3_args(raw)
        assert web3_name == name
        event_type, fields = EVENTS[name]
        block_hash = raw["blockHash"]
        tx_hash = raw["transactionHash"]
        log_index = int(raw["logIndex"], 16)
        expected: dict[str, Any] = {
            "chain_id": CHAIN_ID,
            "tx_hash": tx_hash,
            "log_index": log_index,
            "block_number": int(raw["blockNumber"], 16),
            "block_hash": block_hash,
            "escrow": web3_args["escrow"].lower(),
        }
        for arg, field in fields.items():
            value = web3_args[arg]
            types = {i["name"]: i["type"] for i in inputs}
            expected[field] = (
                value.lower()
                if types[arg] == "address"
                else str(value)
                if types[arg] == "uint256"
                else value
            )
        if any(web3_args["correlationId"]):
            expected["correlation_id"] = str(uuid.UUID(bytes=web3_args["correlationId"]))
        assert decoded.data == expected
        assert decoded.event_type == event_type
        assert decoded.escrow == expected["escrow"]
        assert decoded.event_id == uuid.uuid5(
            EVENT_ID_NAMESPACE, f"{CHAIN_ID}:{block_hash}:{tx_hash}:{log_index}"
        )


def test_a_log_of_another_event_is_not_an_escrow_event() -> None:
    rng = random.Random(1)
    args = {i["name"]: _value(i["type"], rng) for i in ABI_EVENTS["EscrowReleased"]["inputs"]}
    raw = _log("EscrowReleased", args, rng)
    raw["topics"][0] = "0x" + Web3.keccak(text="Transfer(address,address,uint256)").hex()
    assert decode_log(CHAIN_ID, raw) is None
