"""The Chainlink adapter against a real local EVM node (anvil, npm @foundry-rs/anvil) with
an AggregatorV3-compatible contract compiled by solc-js (npm solc)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fusion_prime.oracle.domain import Feed, ObservationStatus, SourceRef, aggregate
from fusion_prime.oracle.sources.chainlink import Chainlink
from tests.evm import Anvil, compile_solidity, deploy

CONTRACT = Path(__file__).parent / "contracts" / "TestAggregator.sol"


@pytest.fixture(scope="module")
def artifact() -> dict[str, Any]:
    return compile_solidity(CONTRACT)["TestAggregator"]


@pytest.fixture
def aggregator(anvil: Anvil, artifact: dict[str, Any]) -> Any:
    return deploy(anvil, artifact, 8)


def set_round(contract: Any, round_id: int, answer: int, updated: int, answered: int) -> None:
    from web3 import Web3

    w3: Web3 = contract.w3
    tx = contract.functions.setRound(round_id, answer, updated, updated, answered).transact(
        {"from": w3.eth.accounts[0]}
    )
    w3.eth.wait_for_transaction_receipt(tx)


async def read(anvil: Anvil, address: str) -> tuple[Any, str | None]:
    source = Chainlink(anvil.url, timeout=5)
    try:
        from fusion_prime.oracle.sources.base import SourceError

        try:
            return await source.fetch(address), None
        except SourceError as exc:
            return None, str(exc)
    finally:
        await source.close()


async def test_latest_round_is_read_with_the_contracts_decimals(
    anvil: Anvil, aggregator: Any, artifact: dict[str, Any]
) -> None:
    now = int(time.time())
    set_round(aggregator, 7, 301234567890, now, 7)  # 3012.34567890 with 8 decimals
    quote, error = await read(anvil, aggregator.address)
    assert error is None
    assert quote.value == Decimal("3012.34567890")
    assert quote.source_time == datetime.fromtimestamp(now, UTC)

    eighteen = deploy(anvil, artifact, 18)
    set_round(eighteen, 1, 2 * 10**18 + 5, now, 1)
    quote, error = await read(anvil, eighteen.address)
    assert error is None
    assert quote.value == Decimal("2.000000000000000005")


@pytest.mark.parametrize(
    ("round_id", "answer", "updated_ago", "answered", "reason"),
    [
        (0, 100, 0, 0, "roundId is 0"),
        (3, 0, 0, 3, "answer is zero or negative"),
        (3, -5, 0, 3, "answer is zero or negative"),
        (5, 100, 0, 4, "answeredInRound 4 < roundId 5"),
        (5, 100, None, 5, "updatedAt is zero or negative"),
    ],
)
async def test_broken_rounds_are_refused(
    anvil: Anvil,
    aggregator: Any,
    round_id: int,
    answer: int,
    updated_ago: int | None,
    answered: int,
    reason: str,
) -> None:
    updated = 0 if updated_ago is None else int(time.time()) - updated_ago
    set_round(aggregator, round_id, answer, updated, answered)
    quote, error = await read(anvil, aggregator.address)
    assert quote is None
    assert error == reason


async def test_a_stale_round_is_read_but_judged_stale(anvil: Anvil, aggregator: Any) -> None:
    old = int(time.time()) - 7200
    set_round(aggregator, 9, 300000000000, old, 9)
    quote, error = await read(anvil, aggregator.address)
    assert error is None
    feed = Feed("ETH-USD", (SourceRef("chainlink", aggregator.address, 3900),), quorum=1)
    from fusion_prime.oracle.domain import Observation

    now = datetime.now(UTC)
    o = Observation("ETH-USD", "chainlink", quote.value, quote.source_time, now, 3)
    result = aggregate(feed, [o], now)
    assert result.aggregate is None
    assert result.judged[0].status is ObservationStatus.STALE

    set_round(aggregator, 10, 300000000000, int(time.time()) - 600, 10)
    quote, _ = await read(anvil, aggregator.address)
    o = Observation("ETH-USD", "chainlink", quote.value, quote.source_time, now, 3)
    assert aggregate(feed, [o], now + timedelta(seconds=1)).aggregate is not None


async def test_an_address_without_a_contract_and_a_dead_node_are_errors(anvil: Anvil) -> None:
    quote, error = await read(anvil, "0x" + "11" * 20)
    assert quote is None
    assert error == "decimals() returned nothing (no aggregator at this address?)"
    source = Chainlink("http://127.0.0.1:9", timeout=2)
    try:
        from fusion_prime.oracle.sources.base import SourceError

        with pytest.raises(SourceError, match="call failed"):
            await source.fetch("0x" + "11" * 20)
    finally:
        await source.close()
