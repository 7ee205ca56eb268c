"""Chainlink AggregatorV3 `latestRoundData()` and `decimals()` through ETH_RPC_URL (web3).

Checks (Liquity's "broken" rules): the call answered, roundId > 0, answer > 0,
updatedAt > 0 (its age and future times are judged with the others' in domain.py), and
answeredInRound >= roundId (deprecated by Chainlink, still a cheap sanity check).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

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


class Chainlink:
    kind = "chainlink"

    def __init__(self, rpc_url: str, timeout: float) -> None:
        # no retries: a round has one timeout for every source, a retry would only overrun it
        provider = AsyncHTTPProvider(
            rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
        self.w3 = AsyncWeb3(provider)

    async def fetch(self, symbol: str) -> Quote:
        try:
            contract = self.w3.eth.contract(
                address=AsyncWeb3.to_checksum_address(symbol), abi=AGGREGATOR_V3_ABI
            )
            decimals, data = await asyncio.gather(
                contract.functions.decimals().call(),
                contract.functions.latestRoundData().call(),
            )
        except TimeoutError:
            raise SourceError("timed out") from None
        except Exception as exc:  # RPC errors, aiohttp errors, a contract that is not one
            raise SourceError(f"call failed: {type(exc).__name__}: {str(exc)[:120]}") from None
        round_id, answer, _started, updated, answered_in = data
        if not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise SourceError(f"decimals() answered {decimals!r}")
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
