"""Pure rules of the oracle: feed settings, freshness, outliers, median, quorum, publishing.

No I/O here. Every price is a Decimal; a float never enters an aggregate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

PAIR_RE = re.compile(r"^[A-Z0-9][A-Z0-9._]{0,30}-USD$")
SYMBOL_RE = re.compile(r"^[A-Za-z0-9._:/\-]{1,80}$")
SOURCE_KINDS = ("coinbase", "kraken", "binance", "coingecko", "chainlink")
# a source time this far ahead of our clock is refused as "in the future"
CLOCK_SKEW = timedelta(seconds=5)


class ObservationStatus(StrEnum):
    USED = "used"
    OUTLIER = "outlier"
    STALE = "stale"
    ERROR = "error"


class FeedStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class SourceRef:
    """One source of a feed: which adapter, what it calls the instrument, its own max age.

    `max_age_seconds` overrides the feed's for slow sources (a Chainlink feed updates on
    its heartbeat, so its answer is legitimately older than an exchange ticker's).
    """

    kind: str
    symbol: str
    max_age_seconds: int | None = None

    @property
    def name(self) -> str:
        return self.kind

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "symbol": self.symbol}
        if self.max_age_seconds is not None:
            out["max_age_seconds"] = self.max_age_seconds
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SourceRef:
        age = raw.get("max_age_seconds")
        return cls(str(raw["kind"]), str(raw["symbol"]), int(age) if age is not None else None)


@dataclass(frozen=True)
class Feed:
    pair: str
    sources: tuple[SourceRef, ...]
    heartbeat_seconds: int = 3600
    deviation: Decimal = Decimal("0.005")
    max_source_age_seconds: int = 120
    quorum: int = 2
    outlier_band: Decimal = Decimal("0.02")
    enabled: bool = True
    version: int = 0

    @property
    def asset(self) -> str:
        """The asset the risk engine knows (USD price of one whole unit)."""
        return self.pair.rsplit("-", 1)[0]


def validate_feed(feed: Feed) -> list[tuple[str, str]]:
    """(field, message) for every rule the feed breaks; empty when valid."""
    errors: list[tuple[str, str]] = []
    if not PAIR_RE.fullmatch(feed.pair):
        errors.append(("pair", "must look like ETH-USD (asset, dash, USD)"))
    if not feed.sources:
        errors.append(("sources", "a feed needs at least one source"))
    seen: set[str] = set()
    for i, s in enumerate(feed.sources):
        if s.kind not in SOURCE_KINDS:
            errors.append((f"sources.{i}.kind", f"must be one of {', '.join(SOURCE_KINDS)}"))
        if s.kind in seen:
            errors.append((f"sources.{i}.kind", f"{s.kind} is listed twice"))
        seen.add(s.kind)
        if not SYMBOL_RE.fullmatch(s.symbol):
            errors.append((f"sources.{i}.symbol", "1-80 letters, digits or ._:/-"))
        if s.kind == "chainlink" and not re.fullmatch(r"0x[0-9a-fA-F]{40}", s.symbol):
            errors.append((f"sources.{i}.symbol", "a Chainlink source is a contract address"))
        if s.max_age_seconds is not None and not 1 <= s.max_age_seconds <= 7 * 86400:
            errors.append((f"sources.{i}.max_age_seconds", "must be 1 s .. 7 days"))
    if not 1 <= feed.quorum <= max(len(feed.sources), 1):
        errors.append(("quorum", "must be between 1 and the number of sources"))
    if not 1 <= feed.heartbeat_seconds <= 7 * 86400:
        errors.append(("heartbeat_seconds", "must be 1 s .. 7 days"))
    if not 1 <= feed.max_source_age_seconds <= 7 * 86400:
        errors.append(("max_source_age_seconds", "must be 1 s .. 7 days"))
    if not (feed.deviation.is_finite() and Decimal(0) < feed.deviation < 1):
        errors.append(("deviation", "must be a fraction in (0, 1), e.g. 0.005 for 0.5 %"))
    if not (feed.outlier_band.is_finite() and Decimal(0) < feed.outlier_band < 1):
        errors.append(("outlier_band", "must be a fraction in (0, 1), e.g. 0.02 for 2 %"))
    return errors


@dataclass(frozen=True)
class Observation:
    """One answer (or failure) of one source for one feed in one round."""

    pair: str
    source: str
    value: Decimal | None
    source_time: datetime | None
    observed_at: datetime
    latency_ms: int
    error: str | None = None


@dataclass(frozen=True)
class Judged:
    observation: Observation
    status: ObservationStatus
    reason: str | None = None


@dataclass(frozen=True)
class Aggregate:
    pair: str
    price: Decimal
    observed_at: datetime
    used: tuple[Observation, ...]
    spread: Decimal  # (max - min) / median of the sources used

    def sources_json(self) -> list[dict[str, Any]]:
        return [
            {
                "source": o.source,
                "value": str(o.value),
                "source_time": o.source_time.isoformat() if o.source_time else None,
            }
            for o in self.used
        ]


@dataclass(frozen=True)
class RoundResult:
    feed: Feed
    judged: tuple[Judged, ...]
    aggregate: Aggregate | None
    reason: str | None = None  # why there is no aggregate

    @property
    def status(self) -> FeedStatus:
        return FeedStatus.OK if self.aggregate is not None else FeedStatus.DEGRADED


def median(values: list[Decimal]) -> Decimal:
    """Middle value; the mean of the two middle ones for an even count (exact Decimal)."""
    if not values:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def _max_age(feed: Feed, source: str) -> int:
    for s in feed.sources:
        if s.kind == source and s.max_age_seconds is not None:
            return s.max_age_seconds
    return feed.max_source_age_seconds


def judge_freshness(feed: Feed, o: Observation, now: datetime) -> Judged | None:
    """An error, a missing/future/too old time; None when the observation may be used."""
    if o.error is not None or o.value is None:
        return Judged(o, ObservationStatus.ERROR, o.error or "no value")
    if o.source_time is None:
        return Judged(o, ObservationStatus.ERROR, "no source time")
    if o.source_time > now + CLOCK_SKEW:
        return Judged(o, ObservationStatus.ERROR, "source time is in the future")
    age = (now - o.source_time).total_seconds()
    limit = _max_age(feed, o.source)
    if age > limit:
        return Judged(o, ObservationStatus.STALE, f"{age:.0f} s old, limit {limit} s")
    return None


def aggregate(feed: Feed, observations: list[Observation], now: datetime) -> RoundResult:
    """Median of the fresh, in-band observations, or the reason there is none.

    The band is measured from the median of all fresh answers; the published price is
    the median of the answers inside it, so one wild source can neither move the price
    nor (while enough others answer) stop it.
    """
    judged: list[Judged] = []
    fresh: list[Observation] = []
    for o in observations:
        verdict = judge_freshness(feed, o, now)
        if verdict is None:
            fresh.append(o)
        else:
            judged.append(verdict)
    used: list[Observation] = []
    if fresh:
        centre = median([o.value for o in fresh if o.value is not None])
        for o in fresh:
            assert o.value is not None
            off = abs(o.value - centre) / centre
            if off > feed.outlier_band:
                judged.append(
                    Judged(
                        o,
                        ObservationStatus.OUTLIER,
                        f"{off * 100:.2f} % from the median {centre}, band "
                        f"{feed.outlier_band * 100} %",
                    )
                )
            else:
                used.append(o)
    judged.extend(Judged(o, ObservationStatus.USED) for o in used)
    judged.sort(key=lambda j: j.observation.source)
    if len(used) < feed.quorum:
        failed = [f"{j.observation.source}: {j.status.value}" for j in judged if j.reason]
        reason = f"quorum not met: {len(used)} usable of {feed.quorum} required" + (
            f" ({'; '.join(failed)})" if failed else ""
        )
        return RoundResult(feed, tuple(judged), None, reason)
    values = [o.value for o in used if o.value is not None]
    price = median(values)
    spread = (max(values) - min(values)) / price
    at = max(o.observed_at for o in used)
    used.sort(key=lambda o: o.source)
    return RoundResult(feed, tuple(judged), Aggregate(feed.pair, price, at, tuple(used), spread))


@dataclass(frozen=True)
class Published:
    price: Decimal
    at: datetime


@dataclass
class FeedState:
    """What the oracle remembers of a feed between rounds (kept in `feed_state`)."""

    pair: str
    status: FeedStatus | None = None
    reason: str | None = None
    last_published: Published | None = None


def publish_reason(state: FeedState, agg: Aggregate, feed: Feed) -> str | None:
    """Why this aggregate must be published, or None (Chainlink-style triggers)."""
    last = state.last_published
    if last is None:
        return "first"
    if state.status is FeedStatus.DEGRADED:
        return "recovered"
    if abs(agg.price - last.price) / last.price >= feed.deviation:
        return "deviation"
    if (agg.observed_at - last.at).total_seconds() >= feed.heartbeat_seconds:
        return "heartbeat"
    return None


def validate_value(value: Decimal) -> str | None:
    """The reason a parsed price is unusable (zero, negative, NaN, infinite)."""
    if not value.is_finite():
        return "price is not finite"
    if value <= 0:
        return "price is zero or negative"
    return None


def default_feeds() -> list[Feed]:
    """The assets the risk engine is set up with, each from five sources.

    Chainlink proxies are the Ethereum mainnet ones; they are only polled when ETH_RPC_URL
    is set. Binance quotes in USDT: no conversion is made, the outlier band drops it if
    USDT leaves the peg by more than the band.
    """
    chainlink_age = 3600 + 300  # heartbeat of these feeds plus the documented slack
    return [
        Feed(
            "ETH-USD",
            (
                SourceRef("coinbase", "ETH-USD"),
                SourceRef("kraken", "XETHZUSD"),
                SourceRef("binance", "ETHUSDT"),
                SourceRef("coingecko", "ethereum"),
                SourceRef("chainlink", "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419", chainlink_age),
            ),
        ),
        Feed(
            "WBTC-USD",
            (
                SourceRef("coinbase", "BTC-USD"),
                SourceRef("kraken", "XXBTZUSD"),
                SourceRef("binance", "BTCUSDT"),
                SourceRef("coingecko", "wrapped-bitcoin"),
                SourceRef("chainlink", "0xF4030086522a5bEEa4988F8cA5B36dbC97BeE88c", chainlink_age),
            ),
        ),
        Feed(
            "USDC-USD",
            (
                SourceRef("kraken", "USDCUSD"),
                SourceRef("coingecko", "usd-coin"),
                SourceRef("chainlink", "0x8fFfFfd4AfB6115b954Bd326cbe7B4BA576818f6", 86400 + 300),
            ),
            heartbeat_seconds=86400,
        ),
    ]
