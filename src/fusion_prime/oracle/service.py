"""Use cases of the oracle: store a round (and publish), manage feeds, read prices.

A round is collected outside any transaction (HTTP calls hold no database lock) and
stored here in one: observations, aggregates, hourly OHLC, feed state, source health
and the outbox events, so an event leaves only with the aggregate it announces.
Nothing here commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from prometheus_client import Counter as Metric
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.oracle import repository as repo
from fusion_prime.oracle.domain import (
    Feed,
    FeedState,
    FeedStatus,
    Judged,
    Observation,
    ObservationStatus,
    RoundResult,
    aggregate,
    publish_reason,
    validate_feed,
)
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.outbox import OutboxRow, publish_rows
from fusion_prime.platform.bus.registry import topic as lookup_topic
from fusion_prime.platform.errors import InvalidError, NotFoundError

PRICES_TOPIC = "market.prices.v1"
SERVICE = "oracle"

OBSERVATIONS = Metric(
    "fp_oracle_observations_total", "Source observations by outcome", ["source", "status"]
)
PUBLISHED = Metric("fp_oracle_published_total", "Events published", ["event_type", "reason"])
DEGRADED = Gauge("fp_oracle_feed_degraded", "1 while a feed has no quorum", ["pair"])


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FeedOutcome:
    result: RoundResult
    published: str | None  # the reason a price.updated left, if one did
    unavailable: bool  # a price.unavailable left this round


def _envelope(event_type: str, asset: str, data: dict[str, Any]) -> Envelope:
    return Envelope(type=event_type, source=SERVICE, subject=asset, data=data)


def price_event(
    result: RoundResult, reason: str, sources: list[dict[str, Any]] | None = None
) -> Envelope:
    """`price.updated` as the risk engine consumes it, plus what the oracle knows."""
    agg = result.aggregate
    assert agg is not None
    used = ",".join(o.source for o in agg.used)
    return _envelope(
        "price.updated",
        result.feed.asset,
        {
            "asset": result.feed.asset,
            "price": str(agg.price),
            # the sources it really came from, never one it did not
            "source": f"oracle:median({used})",
            # when the oracle observed it (not a source's own, possibly older, clock)
            "source_time": agg.observed_at.isoformat(),
            "pair": result.feed.pair,
            "sources": sources if sources is not None else agg.sources_json(),
            "spread": str(agg.spread),
            "observed_at": agg.observed_at.isoformat(),
            "reason": reason,
            "feed_version": result.feed.version,
        },
    )


def unavailable_event(result: RoundResult, state: FeedState, at: datetime) -> Envelope:
    last = state.last_published
    return _envelope(
        "price.unavailable",
        result.feed.asset,
        {
            "asset": result.feed.asset,
            "pair": result.feed.pair,
            "reason": result.reason,
            "observed_at": at.isoformat(),
            "last_price": str(last.price) if last else None,
            "last_published_at": last.at.isoformat() if last else None,
        },
    )


async def store_round(
    session: AsyncSession,
    feeds: Sequence[Feed],
    observations: dict[str, list[Observation]],
    now: datetime | None = None,
) -> list[FeedOutcome]:
    """Aggregate, store and publish one round of every feed (one transaction, serialised)."""
    now = now or now_utc()
    await repo.lock_rounds(session)
    states = await repo.feed_states(session)
    judged: list[Judged] = []
    aggregates: list[repo.AggregateRow] = []
    state_rows: list[repo.StateRow] = []
    events: list[Envelope] = []
    outcomes: list[FeedOutcome] = []
    for feed in feeds:
        result = aggregate(feed, observations.get(feed.pair, []), now)
        judged.extend(result.judged)
        state = states.get(feed.pair, FeedState(feed.pair))
        published = None
        unavailable = False
        agg = result.aggregate
        if agg is not None:
            published = publish_reason(state, agg, feed)
            used = agg.sources_json()
            event = price_event(result, published, used) if published else None
            if event is not None:
                events.append(event)
            aggregates.append(
                repo.AggregateRow(
                    feed.pair,
                    agg.price,
                    agg.observed_at,
                    used,
                    agg.spread,
                    event is not None,
                    published,
                    event.id if event else None,
                )
            )
            state_rows.append(
                repo.StateRow(
                    feed.pair,
                    FeedStatus.OK.value,
                    None,
                    now,
                    agg.price,
                    agg.price if event else None,
                    agg.observed_at if event else None,
                )
            )
        else:
            # one event when the feed loses quorum, none while it stays without
            if state.status is not FeedStatus.DEGRADED:
                events.append(unavailable_event(result, state, now))
                unavailable = True
            state_rows.append(
                repo.StateRow(
                    feed.pair, FeedStatus.DEGRADED.value, result.reason, now, None, None, None
                )
            )
        DEGRADED.labels(feed.pair).set(0 if agg is not None else 1)
        outcomes.append(FeedOutcome(result, published, unavailable))
    await repo.copy_observations(session, judged)
    await repo.insert_aggregates(session, aggregates)
    await repo.upsert_states(session, state_rows)
    await repo.update_health(session, _health(judged))
    await _publish(session, events)
    return outcomes


def _health(judged: Sequence[Judged]) -> dict[str, repo.HealthDelta]:
    """A source succeeded when it answered a usable price (an outlier or a stale answer
    still counts as answered; its usefulness is in the observation's status)."""
    out: dict[str, repo.HealthDelta] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for j in judged:
        o = j.observation
        d = out.get(o.source)
        if d is None:
            d = out[o.source] = repo.HealthDelta()
        d.last_latency_ms = max(d.last_latency_ms, o.latency_ms)
        counts[(o.source, j.status.value)] += 1
        if j.status is ObservationStatus.ERROR:
            d.failures += 1
            if d.last_error_at is None or o.observed_at >= d.last_error_at:
                d.last_error, d.last_error_at = f"{o.pair}: {j.reason}", o.observed_at
        else:
            d.successes += 1
            if d.last_success_at is None or o.observed_at > d.last_success_at:
                d.last_success_at = o.observed_at
    for (source, status), n in counts.items():
        OBSERVATIONS.labels(source, status).inc(n)
    return out


async def _publish(session: AsyncSession, events: Sequence[Envelope]) -> None:
    allowed = lookup_topic(PRICES_TOPIC).event_types
    rows = []
    counts: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.type not in allowed:
            raise ValueError(f"{e.type!r} is not an event type of {PRICES_TOPIC}")
        rows.append(OutboxRow(e.id, PRICES_TOPIC, e.subject, e.type, e.to_json()))
        counts[(e.type, str(e.data.get("reason", "quorum_lost")))] += 1
    await publish_rows(session, rows)
    for (event_type, reason), n in counts.items():
        PUBLISHED.labels(event_type, reason).inc(n)


# -- feeds ---------------------------------------------------------------------------


async def put_feed(
    session: AsyncSession, feed: Feed, *, created_by: str | None = None
) -> tuple[Feed, bool]:
    """Store a new version of a feed; (feed, created) where created means a new pair."""
    errors = validate_feed(feed)
    if errors:
        field, message = errors[0]
        raise InvalidError(
            f"{field}: {message}", errors=[{"field": f, "message": msg} for f, msg in errors]
        )
    version = await repo.insert_feed(session, feed, created_by=created_by)
    stored = Feed(**{**feed.__dict__, "version": version})
    return stored, version == 1


async def ensure_defaults(session: AsyncSession, defaults: Sequence[Feed]) -> list[str]:
    """Create the default feeds that do not exist yet; existing ones are left as they are."""
    have = {f.pair for f in await repo.current_feeds(session)}
    made = []
    for feed in defaults:
        if feed.pair not in have:
            await put_feed(session, feed)
            made.append(feed.pair)
    return made


async def get_feed(session: AsyncSession, pair: str) -> tuple[Feed, datetime, int]:
    versions = await repo.feed_versions(session, pair)
    if not versions:
        raise NotFoundError(f"feed {pair} does not exist")
    feed, created = versions[0]
    return feed, created, len(versions)


# -- reads ---------------------------------------------------------------------------


def _dec(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


async def latest_price(session: AsyncSession, pair: str) -> dict[str, Any]:
    state = await repo.feed_state_row(session, pair)
    row = await repo.latest_aggregate(session, pair)
    if row is None and state is None:
        await get_feed(session, pair)  # 404 for an unknown pair
        raise NotFoundError(f"no price for {pair} yet")
    out: dict[str, Any] = {
        "pair": pair,
        "status": state.status if state else None,
        "reason": state.reason if state else None,
        "status_since": state.status_since.isoformat() if state else None,
        "last_round_at": state.last_round_at.isoformat() if state else None,
        "last_published_price": _dec(state.last_published_price) if state else None,
        "last_published_at": (
            state.last_published_at.isoformat() if state and state.last_published_at else None
        ),
        "price": None,
    }
    if row is not None:
        out.update(
            price=str(row.price),
            observed_at=row.observed_at.isoformat(),
            sources=row.sources,
            spread=str(row.spread),
            published=row.published,
        )
    return out


MAX_BUCKETS = 10_000
MAX_RAW_RANGE = timedelta(days=31)


async def price_history(
    session: AsyncSession, pair: str, start: datetime, end: datetime, seconds: int
) -> list[dict[str, Any]]:
    if end <= start:
        raise InvalidError("`to` must be after `from`", field="to")
    if seconds < 30:
        raise InvalidError("interval must be at least 30 s", field="interval")
    span = end - start
    if span.total_seconds() / seconds > MAX_BUCKETS:
        raise InvalidError(f"more than {MAX_BUCKETS} buckets: widen the interval", field="interval")
    if seconds % 3600:
        if span > MAX_RAW_RANGE:
            raise InvalidError(
                "intervals below an hour (or not whole hours) cover at most 31 days",
                field="interval",
            )
    else:
        # the rollup's unit is the hour: widen to whole hours
        start = start.replace(minute=0, second=0, microsecond=0)
        if end != end.replace(minute=0, second=0, microsecond=0):
            end = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    await get_feed(session, pair)
    rows = await repo.history(session, pair, start, end, seconds)
    return [
        {
            "start": r.bucket_start.isoformat(),
            "open": str(r.open),
            "high": str(r.high),
            "low": str(r.low),
            "close": str(r.close),
            "count": int(r.count),
        }
        for r in rows
    ]


async def price_twap(
    session: AsyncSession, pair: str, window: int, now: datetime | None = None
) -> dict[str, Any]:
    now = now or now_utc()
    await get_feed(session, pair)
    start = now - timedelta(seconds=window)
    row = await repo.twap(session, pair, start, now)
    if not row.points or not row.covered:
        raise NotFoundError(f"no aggregate of {pair} in or before the last {window} s")
    return {
        "pair": pair,
        "window_seconds": window,
        "from": start.isoformat(),
        "to": now.isoformat(),
        "twap": str(row.weighted / row.covered),
        "points": int(row.points),
        "covered_seconds": str(row.covered),
    }


def _rate(successes: int, total: int) -> str | None:
    if not total:
        return None
    return str((Decimal(successes) / total).quantize(Decimal("0.0001")).normalize())


async def sources_view(session: AsyncSession) -> list[dict[str, Any]]:
    out = []
    for r in await repo.source_health(session):
        total = r.successes + r.failures
        out.append(
            {
                "source": r.source,
                "successes": r.successes,
                "failures": r.failures,
                "success_rate": _rate(r.successes, total),
                "last_success_at": r.last_success_at.isoformat() if r.last_success_at else None,
                "last_error": r.last_error,
                "last_error_at": r.last_error_at.isoformat() if r.last_error_at else None,
                "last_latency_ms": r.last_latency_ms,
            }
        )
    return out
