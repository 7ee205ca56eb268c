"""Queries of the oracle database. Set-based writes (COPY, unnest); nothing here commits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.oracle import models as m
from fusion_prime.oracle.domain import (
    Feed,
    FeedState,
    FeedStatus,
    Judged,
    Published,
    SourceRef,
)
from fusion_prime.platform.database import driver_connection

ROUND_LOCK = 0x0F0AC1E  # one writer of rounds at a time (two instances never double-publish)


def _feed(row: Any) -> Feed:
    return Feed(
        pair=row.pair,
        sources=tuple(SourceRef.from_json(s) for s in row.sources),
        heartbeat_seconds=row.heartbeat_seconds,
        deviation=row.deviation,
        max_source_age_seconds=row.max_source_age_seconds,
        quorum=row.quorum,
        outlier_band=row.outlier_band,
        enabled=row.enabled,
        version=row.version,
    )


_LATEST = (
    sa.select(m.feeds.c.pair, sa.func.max(m.feeds.c.version).label("version"))
    .group_by(m.feeds.c.pair)
    .subquery()
)
_CURRENT = (
    sa.select(m.feeds)
    .join(
        _LATEST, sa.and_(m.feeds.c.pair == _LATEST.c.pair, m.feeds.c.version == _LATEST.c.version)
    )
    .order_by(m.feeds.c.pair)
)


async def current_feeds(session: AsyncSession, *, enabled_only: bool = False) -> list[Feed]:
    rows = (await session.execute(_CURRENT)).all()
    out = [_feed(r) for r in rows]
    return [f for f in out if f.enabled] if enabled_only else out


async def feed_versions(session: AsyncSession, pair: str) -> list[tuple[Feed, datetime]]:
    rows = (
        await session.execute(
            sa.select(m.feeds).where(m.feeds.c.pair == pair).order_by(m.feeds.c.version.desc())
        )
    ).all()
    return [(_feed(r), r.created_at) for r in rows]


async def insert_feed(session: AsyncSession, feed: Feed, *, created_by: str | None = None) -> int:
    """A new version of the feed (1 for a new pair); the pair's rows are locked first."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('feed:' || :p))"), {"p": feed.pair}
    )
    version = int(
        await session.scalar(
            sa.select(sa.func.coalesce(sa.func.max(m.feeds.c.version), 0) + 1).where(
                m.feeds.c.pair == feed.pair
            )
        )
        or 1
    )
    await session.execute(
        sa.insert(m.feeds).values(
            pair=feed.pair,
            version=version,
            sources=[s.as_json() for s in feed.sources],
            heartbeat_seconds=feed.heartbeat_seconds,
            deviation=feed.deviation,
            max_source_age_seconds=feed.max_source_age_seconds,
            quorum=feed.quorum,
            outlier_band=feed.outlier_band,
            enabled=feed.enabled,
            created_by=created_by,
        )
    )
    return version


async def lock_rounds(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROUND_LOCK})


async def feed_states(session: AsyncSession) -> dict[str, FeedState]:
    rows = (await session.execute(sa.select(m.feed_state))).all()
    out = {}
    for r in rows:
        last = (
            Published(r.last_published_price, r.last_published_at)
            if r.last_published_at is not None
            else None
        )
        out[r.pair] = FeedState(r.pair, FeedStatus(r.status), r.reason, last)
    return out


@dataclass(frozen=True)
class AggregateRow:
    pair: str
    price: Decimal
    observed_at: datetime
    sources: list[dict[str, Any]]
    spread: Decimal
    published: bool
    publish_reason: str | None
    event_id: Any


@dataclass(frozen=True)
class StateRow:
    pair: str
    status: str
    reason: str | None
    at: datetime
    last_price: Decimal | None
    published_price: Decimal | None
    published_at: datetime | None


OBSERVATION_COLUMNS = [
    "pair",
    "source",
    "value",
    "source_time",
    "observed_at",
    "latency_ms",
    "status",
    "error",
]


async def copy_observations(session: AsyncSession, judged: Sequence[Judged]) -> None:
    """Every observation of the round (used, outlier, stale, error and why), one COPY."""
    if not judged:
        return
    apg = await driver_connection(session)
    await apg.copy_records_to_table(
        "observations",
        records=[
            (
                j.observation.pair,
                j.observation.source,
                j.observation.value,
                j.observation.source_time,
                j.observation.observed_at,
                j.observation.latency_ms,
                j.status.value,
                j.reason,
            )
            for j in judged
        ],
        columns=OBSERVATION_COLUMNS,
    )


AGGREGATE_COLUMNS = [
    "pair",
    "price",
    "observed_at",
    "sources",
    "spread",
    "published",
    "publish_reason",
    "event_id",
]


# hourly OHLC kept with the aggregates; open/close follow the earliest/latest time seen
_UPSERT_HOURS = text(
    "INSERT INTO aggregate_hours AS h (pair, bucket, open, high, low, close, first_at, "
    "last_at, count) SELECT p, date_trunc('hour', t), v, v, v, v, t, t, 1 FROM "
    "unnest(CAST(:pairs AS text[]), CAST(:prices AS numeric[]), CAST(:ats AS timestamptz[])) "
    "AS u(p, v, t) ON CONFLICT (pair, bucket) DO UPDATE SET "
    "high = greatest(h.high, excluded.high), low = least(h.low, excluded.low), "
    "open = CASE WHEN excluded.first_at < h.first_at THEN excluded.open ELSE h.open END, "
    "first_at = least(h.first_at, excluded.first_at), "
    "close = CASE WHEN excluded.last_at >= h.last_at THEN excluded.close ELSE h.close END, "
    "last_at = greatest(h.last_at, excluded.last_at), count = h.count + 1"
)


async def insert_aggregates(session: AsyncSession, rows: Sequence[AggregateRow]) -> None:
    """The round's aggregates (one COPY) and their hours in the rollup."""
    if not rows:
        return
    apg = await driver_connection(session)
    await apg.copy_records_to_table(
        "aggregates",
        records=[
            (r.pair, r.price, r.observed_at, json.dumps(r.sources), r.spread, r.published,
             r.publish_reason, r.event_id)
            for r in rows
        ],
        columns=AGGREGATE_COLUMNS,
    )  # fmt: skip
    await session.execute(
        _UPSERT_HOURS,
        {
            "pairs": [r.pair for r in rows],
            "prices": [r.price for r in rows],
            "ats": [r.observed_at for r in rows],
        },
    )


_UPSERT_STATES = text(
    "INSERT INTO feed_state AS s (pair, status, reason, status_since, last_round_at, "
    "last_price, last_published_price, last_published_at) "
    "SELECT p, st, r, t, t, lp, pp, pa FROM unnest(CAST(:pairs AS text[]), "
    "CAST(:statuses AS text[]), CAST(:reasons AS text[]), CAST(:ats AS timestamptz[]), "
    "CAST(:last AS numeric[]), CAST(:pub_prices AS numeric[]), "
    "CAST(:pub_ats AS timestamptz[])) AS u(p, st, r, t, lp, pp, pa) "
    "ON CONFLICT (pair) DO UPDATE SET "
    "status_since = CASE WHEN s.status = excluded.status THEN s.status_since "
    "ELSE excluded.status_since END, "
    "status = excluded.status, reason = excluded.reason, last_round_at = excluded.last_round_at, "
    "last_price = coalesce(excluded.last_price, s.last_price), "
    "last_published_price = coalesce(excluded.last_published_price, s.last_published_price), "
    "last_published_at = coalesce(excluded.last_published_at, s.last_published_at)"
)


async def upsert_states(session: AsyncSession, rows: Sequence[StateRow]) -> None:
    if not rows:
        return
    await session.execute(
        _UPSERT_STATES,
        {
            "pairs": [r.pair for r in rows],
            "statuses": [r.status for r in rows],
            "reasons": [r.reason for r in rows],
            "ats": [r.at for r in rows],
            "last": [r.last_price for r in rows],
            "pub_prices": [r.published_price for r in rows],
            "pub_ats": [r.published_at for r in rows],
        },
    )


_UPSERT_HEALTH = text(
    "INSERT INTO source_health AS h (source, successes, failures, last_success_at, "
    "last_error, last_error_at, last_latency_ms, updated_at) "
    "SELECT src, ok, bad, ls, le, lea, lat, now() FROM unnest(CAST(:sources AS text[]), "
    "CAST(:oks AS bigint[]), CAST(:bads AS bigint[]), CAST(:last_ok AS timestamptz[]), "
    "CAST(:errors AS text[]), CAST(:error_ats AS timestamptz[]), CAST(:latency AS int[])) "
    "AS u(src, ok, bad, ls, le, lea, lat) ON CONFLICT (source) DO UPDATE SET "
    "successes = h.successes + excluded.successes, failures = h.failures + excluded.failures, "
    "last_success_at = coalesce(excluded.last_success_at, h.last_success_at), "
    "last_error = coalesce(excluded.last_error, h.last_error), "
    "last_error_at = coalesce(excluded.last_error_at, h.last_error_at), "
    "last_latency_ms = excluded.last_latency_ms, updated_at = now()"
)


@dataclass
class HealthDelta:
    successes: int = 0
    failures: int = 0
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_latency_ms: int = 0


async def update_health(session: AsyncSession, deltas: dict[str, HealthDelta]) -> None:
    if not deltas:
        return
    items = sorted(deltas.items())
    await session.execute(
        _UPSERT_HEALTH,
        {
            "sources": [k for k, _ in items],
            "oks": [d.successes for _, d in items],
            "bads": [d.failures for _, d in items],
            "last_ok": [d.last_success_at for _, d in items],
            "errors": [d.last_error for _, d in items],
            "error_ats": [d.last_error_at for _, d in items],
            "latency": [d.last_latency_ms for _, d in items],
        },
    )


async def source_health(session: AsyncSession) -> list[Any]:
    return list(
        (await session.execute(sa.select(m.source_health).order_by(m.source_health.c.source))).all()
    )


async def feed_state_row(session: AsyncSession, pair: str) -> Any:
    return (
        await session.execute(sa.select(m.feed_state).where(m.feed_state.c.pair == pair))
    ).first()


async def latest_aggregate(session: AsyncSession, pair: str) -> Any:
    return (
        await session.execute(
            sa.select(m.aggregates)
            .where(m.aggregates.c.pair == pair)
            .order_by(m.aggregates.c.observed_at.desc(), m.aggregates.c.id.desc())
            .limit(1)
        )
    ).first()


_BIN = "date_bin(make_interval(secs => :secs), {}, TIMESTAMPTZ 'epoch') AS bucket_start"
_HISTORY_HOURS = text(
    f"SELECT {_BIN.format('bucket')}, "
    "(array_agg(open ORDER BY first_at))[1] AS open, max(high) AS high, min(low) AS low, "
    "(array_agg(close ORDER BY last_at DESC))[1] AS close, sum(count) AS count "
    "FROM aggregate_hours WHERE pair = :pair AND bucket >= :start AND bucket < :end "
    "GROUP BY 1 ORDER BY 1"
)
_HISTORY_HOURLY = text(
    "SELECT bucket AS bucket_start, open, high, low, close, count FROM aggregate_hours "
    "WHERE pair = :pair AND bucket >= :start AND bucket < :end ORDER BY bucket"
)
_HISTORY_RAW = text(
    f"SELECT {_BIN.format('observed_at')}, "
    "(array_agg(price ORDER BY observed_at))[1] AS open, max(price) AS high, "
    "min(price) AS low, (array_agg(price ORDER BY observed_at DESC))[1] AS close, "
    "count(*) AS count FROM aggregates "
    "WHERE pair = :pair AND observed_at >= :start AND observed_at < :end "
    "GROUP BY 1 ORDER BY 1"
)


async def history(
    session: AsyncSession, pair: str, start: datetime, end: datetime, seconds: int
) -> list[Any]:
    """OHLC buckets of `seconds`; whole-hour buckets come from the hourly rollup.

    With the rollup, `start`/`end` are hour-aligned by the caller (an hour is the
    smallest unit the rollup knows)."""
    sql = _HISTORY_HOURS if seconds % 3600 == 0 else _HISTORY_RAW
    params: dict[str, Any] = {"pair": pair, "start": start, "end": end, "secs": seconds}
    if seconds == 3600:  # the rollup's own rows
        sql = _HISTORY_HOURLY
        del params["secs"]
    return list((await session.execute(sql, params)).all())


_TWAP = text(
    "WITH pts AS ((SELECT observed_at, price FROM aggregates WHERE pair = :pair "
    "AND observed_at <= :start ORDER BY observed_at DESC LIMIT 1) UNION ALL "
    "(SELECT observed_at, price FROM aggregates WHERE pair = :pair AND observed_at > :start "
    "AND observed_at <= :end)), seg AS (SELECT greatest(observed_at, :start) AS t0, "
    "coalesce(lead(observed_at) OVER (ORDER BY observed_at), :end) AS t1, price FROM pts) "
    "SELECT sum(price * CAST(extract(epoch FROM t1 - t0) AS numeric)) AS weighted, "
    "sum(CAST(extract(epoch FROM t1 - t0) AS numeric)) AS covered, count(*) AS points, "
    "min(t0) AS first_at FROM seg"
)


async def twap(session: AsyncSession, pair: str, start: datetime, end: datetime) -> Any:
    return (await session.execute(_TWAP, {"pair": pair, "start": start, "end": end})).one()


async def delete_observations_before(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Up to `limit` raw observations older than `cutoff` (aggregates are kept)."""
    result = await session.execute(
        text(
            "DELETE FROM observations WHERE id IN (SELECT id FROM observations "
            "WHERE observed_at < :cutoff ORDER BY observed_at LIMIT :n)"
        ),
        {"cutoff": cutoff, "n": limit},
    )
    return int(getattr(result, "rowcount", 0) or 0)
