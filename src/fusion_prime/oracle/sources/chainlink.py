"""Chainlink AggregatorV3 `latestRoundData()` and `decimals()` through ETH_RPC_URL (web3).

The call data is web3's ABI encoding of the two functions (computed once); both calls
go as one JSON-RPC batch and the answers are decoded with web3's codec. Through the
contract-function API every read cost three round trips and ~4x the CPU (bench/oracle.py).

Checks (Liquity's "broken" rules): the call answered, roundId > 0, answer > 0,
updatedAt > 0 (its age and future times are judged with the others' in domain.py), and
answeredInRound >= roundId (deprecated by Chainlink, still a cheap sanity check).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

from fusion_prime.oracle.sources.base import Quote, SourceError, unix_time

AGGREGATOR_V3_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "decimals",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
    },
    {
        "type": "function",
        "name": "latestRoundData",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [
            {"name": "roundId", "type": "uint80"},
            {"name": "answer", "type": "int256"},
            {"name": "startedAt", "type": "uint256"},
            {"name": "updatedAt", "type": "uint256"},
            {"name": "answeredInRound", "type": "uint80"},
        ],
    },
]


ETH_CALL = RPCEndpoint("eth_call")
ROUND_TYPES = ["uint80", "int256", "uint256", "uint256", "uint80"]


def _request_id(response: Any) -> int:
    rid = response.get("id") if isinstance(response, dict) else None
    return rid if isinstance(rid, int) else 0


class Chainlink:
    kind = "chainlink"

    def __init__(self, rpc_url: str, timeout: float) -> None:
        # no retries: a round has one timeout for every source, a retry would only overrun it
        provider = AsyncHTTPProvider(
            rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
        # no middleware: the default validation asks eth_chainId before and after every
        # call (three round trips per read); a read-only eth_call needs none of it
        self.w3 = AsyncWeb3(provider, middleware=[])
        abi = self.w3.eth.contract(abi=AGGREGATOR_V3_ABI)
        self._decimals = abi.encode_abi("decimals")
        self._latest = abi.encode_abi("latestRoundData")

    def _result(self, response: Any, what: str) -> bytes:
        if not isinstance(response, dict):
            raise SourceError(f"{what}: malformed JSON-RPC answer")
        if response.get("error"):
            err = response["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise SourceError(f"{what} failed: {str(message)[:120]}")
        raw = response.get("result")
        if not isinstance(raw, str) or not raw.startswith("0x") or raw == "0x":
            raise SourceError(f"{what} returned nothing (no aggregator at this address?)")
        try:
            return bytes.fromhex(raw[2:])
        except ValueError:
            raise SourceError(f"{what} returned malformed data") from None

    async def fetch(self, symbol: str) -> Quote:
        try:
            address = AsyncWeb3.to_checksum_address(symbol)
        except ValueError:
            raise SourceError("not a contract address") from None
        try:
            # decimals() and latestRoundData() in one JSON-RPC batch: one round trip
            responses = await self.w3.provider.make_batch_request(
                [
                    (ETH_CALL, [{"to": address, "data": self._decimals}, "latest"]),
                    (ETH_CALL, [{"to": address, "data": self._latest}, "latest"]),
                ]
            )
        except TimeoutError:
            raise SourceError("timed out") from None
        except Exception as exc:  # RPC transport errors (aiohttp, HTTP status, bad JSON)
            raise SourceError(f"call failed: {type(exc).__name__}: {str(exc)[:120]}") from None
        if not isinstance(responses, list) or len(responses) != 2:
            raise SourceError("call failed: the node did not answer the batch")
        # a batch answer may come in any order: JSON-RPC ids follow the request order
        by_id: list[Any] = sorted(responses, key=_request_id)
        try:
            (decimals,) = self.w3.codec.decode(["uint8"], self._result(by_id[0], "decimals()"))
            round_id, answer, _started, updated, answered_in = self.w3.codec.decode(
                ROUND_TYPES, self._result(by_id[1], "latestRoundData()")
            )
        except SourceError:
            raise
        except Exception as exc:  # an answer that does not decode as the ABI says
            raise SourceError(f"undecodable answer: {type(exc).__name__}") from None
        if not 0 <= decimals <= 36:
            raise SourceError(f"decimals() answered {decimals}")
        if round_id == 0:
            raise SourceError("roundId is 0")
        if answer <= 0:
            raise SourceError("answer is zero or negative")
        if answered_in < round_id:
            raise SourceError(f"answeredInRound {answered_in} < roundId {round_id}")
        at = unix_time(int(updated), "updatedAt")
        return Quote(Decimal(int(answer)).scaleb(-decimals), at)

    async def close(self) -> None:
        await self.w3.provider.disconnect()
