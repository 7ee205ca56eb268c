"""HTTP API of the oracle (thin: parsing and rendering around service.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fusion_prime.oracle import repository as repo
from fusion_prime.oracle import service
from fusion_prime.oracle.domain import PAIR_RE, SOURCE_KINDS, Feed, SourceRef
from fusion_prime.platform.auth import Caller, requires
from fusion_prime.platform.errors import InvalidError
from fusion_prime.platform.runtime import Session

router = APIRouter(tags=["oracle"])

PairPath = Annotated[str, Path(pattern=PAIR_RE.pattern, description="e.g. ETH-USD")]
_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _no_float(v: object) -> object:
    if isinstance(v, float):
        raise ValueError('must be a decimal string (e.g. "0.005"), not a JSON number')
    return v


class SourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description=f"one of {', '.join(SOURCE_KINDS)}")
    symbol: str = Field(min_length=1, max_length=80)
    max_age_seconds: int | None = Field(default=None, ge=1, le=7 * 86400)


class FeedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceIn] = Field(min_length=1, max_length=10)
    heartbeat_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    deviation: Decimal = Field(default=Decimal("0.005"), description="fraction, 0.005 = 0.5 %")
    max_source_age_seconds: int = Field(default=120, ge=1, le=7 * 86400)
    quorum: int = Field(default=2, ge=1, le=10)
    outlier_band: Decimal = Field(default=Decimal("0.02"), description="fraction from median")
    enabled: bool = True

    _d = field_validator("deviation", "outlier_band", mode="before")(_no_float)


def feed_json(feed: Feed, created_at: datetime | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pair": feed.pair,
        "asset": feed.asset,
        "version": feed.version,
        "sources": [s.as_json() for s in feed.sources],
        "heartbeat_seconds": feed.heartbeat_seconds,
        "deviation": str(feed.deviation),
        "max_source_age_seconds": feed.max_source_age_seconds,
        "quorum": feed.quorum,
        "outlier_band": str(feed.outlier_band),
        "enabled": feed.enabled,
    }
    if created_at is not None:
        out["created_at"] = created_at.isoformat()
    return out


@router.get("/feeds", dependencies=requires("viewer"))
async def list_feeds(session: Session) -> dict[str, Any]:
    return {"feeds": [feed_json(f) for f in await repo.current_feeds(session)]}


@router.get("/feeds/{pair}", dependencies=requires("viewer"))
async def get_feed(pair: PairPath, session: Session) -> dict[str, Any]:
    feed, created, versions = await service.get_feed(session, pair)
    return {**feed_json(feed, created), "versions": versions}


@router.put("/feeds/{pair}", dependencies=requires("risk_manager"))
async def put_feed(
    pair: PairPath, body: FeedIn, session: Session, response: Response, caller: Caller
) -> dict[str, Any]:
    """Store a new version of the feed's settings (the first version creates it)."""
    feed = Feed(
        pair=pair,
        sources=tuple(SourceRef(s.kind, s.symbol, s.max_age_seconds) for s in body.sources),
        heartbeat_seconds=body.heartbeat_seconds,
        deviation=body.deviation,
        max_source_age_seconds=body.max_source_age_seconds,
        quorum=body.quorum,
        outlier_band=body.outlier_band,
        enabled=body.enabled,
    )
    stored, created = await service.put_feed(session, feed, created_by=caller.actor)
    response.status_code = 201 if created else 200
    return feed_json(stored)


@router.get("/prices/{pair}", dependencies=requires("viewer"))
async def latest_price(pair: PairPath, session: Session) -> dict[str, Any]:
    """The latest aggregate with the sources it used, and the feed's status."""
    return await service.latest_price(session, pair)


def _seconds(raw: str, name: str) -> int:
    m = _DURATION.fullmatch(raw.strip())
    if not m or int(m.group(1)) == 0:
        raise InvalidError(f"{name} must be a duration like 30s, 5m, 1h or 1d", field=name)
    return int(m.group(1)) * _UNIT[m.group(2)]


def _aware(at: datetime, name: str) -> datetime:
    if at.tzinfo is None:
        raise InvalidError(f"`{name}` needs a timezone (e.g. 2026-01-01T00:00:00Z)", field=name)
    return at.astimezone(UTC)


@router.get("/prices/{pair}/history", dependencies=requires("viewer"))
async def price_history(
    pair: PairPath,
    session: Session,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    interval: Annotated[str, Query(max_length=12)] = "1h",
) -> dict[str, Any]:
    """OHLC buckets of the stored aggregates (default: the last 24 h in hours)."""
    seconds = _seconds(interval, "interval")
    end_at = _aware(end, "to") if end else service.now_utc()
    try:
        start_at = _aware(start, "from") if start else end_at - timedelta(days=1)
        buckets = await service.price_history(session, pair, start_at, end_at, seconds)
    except OverflowError:
        raise InvalidError("`from`/`to` are outside the supported dates", field="to") from None
    return {"pair": pair, "interval_seconds": seconds, "buckets": buckets}


@router.get("/prices/{pair}/twap", dependencies=requires("viewer"))
async def price_twap(
    pair: PairPath,
    session: Session,
    window: Annotated[str, Query(max_length=12)] = "1h",
) -> dict[str, Any]:
    """Time-weighted average of the stored aggregates over the last `window`."""
    seconds = _seconds(window, "window")
    if seconds > 7 * 86400:
        raise InvalidError("window is at most 7 days", field="window")
    return await service.price_twap(session, pair, seconds)


@router.get("/sources", dependencies=requires("viewer"))
async def sources(session: Session) -> dict[str, Any]:
    """Health of every source: success rate, last error, last success, last latency."""
    return {"sources": await service.sources_view(session)}
