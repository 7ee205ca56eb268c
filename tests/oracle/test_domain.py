"""The pure rules: median, freshness, outliers, quorum, publishing triggers, feed checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fusion_prime.oracle.domain import (
    Feed,
    FeedState,
    FeedStatus,
    Observation,
    ObservationStatus,
    Published,
    SourceRef,
    aggregate,
    median,
    publish_reason,
    validate_feed,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KINDS = ("binance", "chainlink", "coinbase", "coingecko", "kraken")


def feed(n: int = 5, **kw: object) -> Feed:
    refs = tuple(SourceRef(k, "0x" + "ab" * 20 if k == "chainlink" else "X") for k in KINDS[:n])
    return Feed("ETH-USD", refs, **kw)  # type: ignore[arg-type]


def obs(source: str, value: str | None, age: float = 1.0, error: str | None = None) -> Observation:
    at = NOW - timedelta(seconds=age)
    return Observation("ETH-USD", source, Decimal(value) if value else None, at, NOW, 10, error)


def test_median_of_odd_and_even_counts() -> None:
    assert median([Decimal(3), Decimal(1), Decimal(2)]) == Decimal(2)
    assert median([Decimal("4"), Decimal("1"), Decimal("3"), Decimal("2")]) == Decimal("2.5")
    assert median([Decimal("3000.01"), Decimal("3000.02")]) == Decimal("3000.015")
    assert median([Decimal(7)]) == Decimal(7)
    with pytest.raises(ValueError, match="median of nothing"):
        median([])


def test_the_price_is_the_median_of_the_sources_used() -> None:
    r = aggregate(
        feed(4),
        [
            obs("binance", "100"),
            obs("chainlink", "101"),
            obs("coinbase", "102"),
            obs("coingecko", "101.5"),
        ],
        NOW,
    )
    assert r.aggregate is not None
    assert r.aggregate.price == Decimal("101.25")
    assert r.aggregate.spread == Decimal(2) / Decimal("101.25")
    assert [o.source for o in r.aggregate.used] == ["binance", "chainlink", "coinbase", "coingecko"]


def test_an_outlier_is_recorded_and_not_used() -> None:
    r = aggregate(
        feed(3), [obs("binance", "100"), obs("chainlink", "100.5"), obs("coinbase", "110")], NOW
    )
    assert r.aggregate is not None
    assert r.aggregate.price == Decimal("100.25")
    status = {j.observation.source: j.status for j in r.judged}
    assert status == {
        "binance": ObservationStatus.USED,
        "chainlink": ObservationStatus.USED,
        "coinbase": ObservationStatus.OUTLIER,
    }
    reason = next(j.reason for j in r.judged if j.status is ObservationStatus.OUTLIER)
    assert reason is not None
    assert "from the median" in reason


def test_an_answer_just_inside_the_band_is_used() -> None:
    # median of (100, 100, 102) is 100: 102 is 2 % off, exactly the band
    r = aggregate(
        feed(3), [obs("binance", "100"), obs("chainlink", "100"), obs("coinbase", "102")], NOW
    )
    assert r.aggregate is not None
    assert len(r.aggregate.used) == 3


def test_stale_future_and_failed_answers_do_not_count_towards_quorum() -> None:
    f = feed(4, quorum=2, max_source_age_seconds=120)
    r = aggregate(
        f,
        [
            obs("binance", "100", age=121),
            obs("chainlink", "100", age=-60),
            obs("coinbase", None, error="timed out"),
            obs("coingecko", "100"),
        ],
        NOW,
    )
    assert r.aggregate is None
    assert r.status is FeedStatus.DEGRADED
    assert r.reason is not None
    assert r.reason.startswith("quorum not met: 1 usable of 2 required")
    status = {j.observation.source: (j.status, j.reason) for j in r.judged}
    assert status["binance"][0] is ObservationStatus.STALE
    assert status["chainlink"] == (ObservationStatus.ERROR, "source time is in the future")
    assert status["coinbase"] == (ObservationStatus.ERROR, "timed out")
    assert status["coingecko"][0] is ObservationStatus.USED


def test_a_source_may_have_its_own_max_age() -> None:
    f = Feed(
        "ETH-USD",
        (SourceRef("coinbase", "ETH-USD"), SourceRef("chainlink", "0x" + "ab" * 20, 3900)),
        quorum=2,
    )
    r = aggregate(f, [obs("coinbase", "100"), obs("chainlink", "100", age=3000)], NOW)
    assert r.aggregate is not None
    r = aggregate(f, [obs("coinbase", "100"), obs("chainlink", "100", age=4000)], NOW)
    assert r.aggregate is None


def test_publishing_on_first_deviation_heartbeat_and_recovery() -> None:
    f = feed(3, heartbeat_seconds=3600, deviation=Decimal("0.005"))
    agg = aggregate(f, [obs("binance", "1000"), obs("chainlink", "1000")], NOW).aggregate
    assert agg is not None
    assert publish_reason(FeedState("ETH-USD"), agg, f) == "first"
    state = FeedState("ETH-USD", FeedStatus.OK, None, Published(Decimal("1004.99"), NOW))
    assert publish_reason(state, agg, f) is None  # 0.4975 % < 0.5 %
    state.last_published = Published(Decimal("1005.03"), NOW)
    assert publish_reason(state, agg, f) == "deviation"
    state.last_published = Published(Decimal(1000), NOW - timedelta(seconds=3599))
    assert publish_reason(state, agg, f) is None
    state.last_published = Published(Decimal(1000), NOW - timedelta(seconds=3601))
    assert publish_reason(state, agg, f) == "heartbeat"
    state.status = FeedStatus.DEGRADED
    state.last_published = Published(Decimal(1000), NOW)
    assert publish_reason(state, agg, f) == "recovered"


def test_feed_validation() -> None:
    assert validate_feed(feed(3)) == []
    bad = Feed(
        "ETH/USD",
        (
            SourceRef("coinbase", "ETH-USD"),
            SourceRef("coinbase", "x"),
            SourceRef("nasdaq", "x"),
            SourceRef("chainlink", "not-an-address"),
        ),
        quorum=9,
        deviation=Decimal("NaN"),
        outlier_band=Decimal(1),
    )
    fields = {f for f, _ in validate_feed(bad)}
    assert fields == {
        "pair",
        "sources.1.kind",
        "sources.2.kind",
        "sources.3.symbol",
        "quorum",
        "deviation",
        "outlier_band",
    }
