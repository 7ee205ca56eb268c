"""Each HTTP adapter against a local server speaking that API: its real answer, its
error shapes, garbage, zero/negative/non-finite prices and slow answers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fusion_prime.oracle.domain import SourceRef
from tests.oracle.conftest import ETH, source_set
from tests.oracle.fakes import FakeApis

KINDS = list(ETH)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_real_shaped_answer_is_parsed_exactly(apis: FakeApis, kind: str) -> None:
    apis.state.set(kind, ETH[kind], "3012.3456789")
    sources = source_set(apis)
    try:
        o = await sources.observe("ETH-USD", SourceRef(kind, ETH[kind]))
    finally:
        await sources.close()
    assert o.error is None
    assert o.value == Decimal("3012.3456789")  # CoinGecko's JSON number too: no float
    assert isinstance(o.value, Decimal)
    assert o.source_time is not None
    assert abs(o.source_time - datetime.now(UTC)) < timedelta(seconds=5)
    assert o.latency_ms >= 0
    assert apis.state.requests[kind] == 1


ERRORS = {
    "coinbase": "HTTP 404: NotFound",
    "kraken": "kraken error: EQuery:Unknown asset pair",
    "binance": "HTTP 400: Invalid symbol.",
    "coingecko": "HTTP 429",
}


@pytest.mark.parametrize("kind", KINDS)
async def test_the_apis_error_shape_is_recorded_as_the_reason(apis: FakeApis, kind: str) -> None:
    apis.state.set(kind, ETH[kind], "3000")
    apis.state.mode(kind, "error")
    sources = source_set(apis)
    try:
        o = await sources.observe("ETH-USD", SourceRef(kind, ETH[kind]))
    finally:
        await sources.close()
    assert o.value is None
    assert o.error is not None
    assert o.error.startswith(ERRORS[kind])


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unknown_instrument_is_an_error(apis: FakeApis, kind: str) -> None:
    sources = source_set(apis)
    try:
        o = await sources.observe("ETH-USD", SourceRef(kind, ETH[kind]))
    finally:
        await sources.close()
    assert o.value is None
    assert o.error


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "response is not JSON"),
        ("zero", "zero or negative"),
        ("negative", "zero or negative"),
        ("nonfinite", "n"),  # NaN: "not finite" or "non-finite number" per parser
    ],
)
async def test_unusable_answers_are_refused_with_a_reason(
    apis: FakeApis, kind: str, mode: str, reason: str
) -> None:
    apis.state.set(kind, ETH[kind], "3000")
    apis.state.mode(kind, mode)
    sources = source_set(apis)
    try:
        o = await sources.observe("ETH-USD", SourceRef(kind, ETH[kind]))
    finally:
        await sources.close()
    assert o.value is None, o
    assert o.error is not None
    assert reason in o.error
    if mode == "nonfinite":
        assert "finite" in o.error


async def test_a_slow_source_times_out_without_delaying_the_others(apis: FakeApis) -> None:
    for kind in KINDS:
        apis.state.set(kind, ETH[kind], "3000")
    apis.state.mode("kraken", "ok", delay=3.0)
    sources = source_set(apis, timeout=0.5)
    refs = [SourceRef(k, ETH[k]) for k in KINDS]
    started = time.perf_counter()
    try:
        got = await asyncio.gather(*(sources.observe("ETH-USD", r) for r in refs))
    finally:
        await sources.close()
    took = time.perf_counter() - started
    by = {o.source: o for o in got}
    assert by["kraken"].error == "timed out"
    assert by["kraken"].latency_ms >= 450
    for kind in ("coinbase", "binance", "coingecko"):
        assert by[kind].value == Decimal(3000)
        assert by[kind].latency_ms < 450
    assert took < 2.0  # bounded by the timeout, not by the 3 s answer


async def test_a_source_that_does_not_answer_at_all_is_an_error(apis: FakeApis) -> None:
    from tests.oracle.fakes import FakeApis as _F

    dead = _F("http://127.0.0.1:9", apis.state)  # nothing listens on the discard port
    sources = source_set(dead)
    try:
        o = await sources.observe("ETH-USD", SourceRef("coinbase", "ETH-USD"))
    finally:
        await sources.close()
    assert o.value is None
    assert o.error is not None
    assert o.error.startswith("request failed")
