"""The risk service: margin health of every account on every price tick."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import Field

from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.runtime import BackgroundTask, Runtime
from fusion_prime.platform.settings import BaseServiceSettings
from fusion_prime.platform.spec import ServiceSpec

log = get_logger(__name__)


class RiskSettings(BaseServiceSettings):
    """Tier bounds, hysteresis and intervals live in the database (`PUT /config`) so every
    instance and every consumer uses the same values; only the sweep cadence is here."""

    sweep_interval: float = Field(default=30.0, alias="RISK_SWEEP_INTERVAL", gt=0)
    # memory: the book in memory (live.py), loaded at start, re-evaluated incrementally;
    # sql: every pass filters the holders in PostgreSQL (the earlier path, kept as the
    # baseline of bench/risk_live.py and for small books)
    book: Literal["memory", "sql"] = Field(default="memory", alias="RISK_BOOK")
    # memory mode: accounts split by crc32(id) % RISK_PARTITIONS; each instance evaluates
    # the partitions it leases (RISK_LEASE_SECONDS; renewed every third of it)
    partitions: int = Field(default=16, alias="RISK_PARTITIONS", ge=1, le=4096)
    lease_seconds: float = Field(default=10.0, alias="RISK_LEASE_SECONDS", gt=0, le=600)
    instance: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        alias="RISK_INSTANCE",
        min_length=1,
        max_length=200,
    )


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.risk.api import router

    return [router]


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    settings = runtime.settings
    interval = settings.sweep_interval if isinstance(settings, RiskSettings) else 30.0
    if not isinstance(settings, RiskSettings) or settings.book == "sql":
        return [_sweeper(runtime, interval, None, None)]
    from fusion_prime.platform.admin import asyncpg_dsn
    from fusion_prime.risk import live

    # registered now, before the consumers start: they and the API wait until loaded
    book = live.LiveBook(runtime.url, settings.instance, settings.partitions)
    live.register(book)
    runtime.state["book"] = book
    leases = live.Leases(book, runtime.sessions, settings.lease_seconds)
    dsn = asyncpg_dsn(runtime.url.render_as_string(hide_password=False))

    async def follower() -> None:
        await live.follow(book, runtime.sessions, dsn, FOLLOW_POLL_SECONDS)

    async def lease_keeper() -> None:
        await book.ready.wait()
        await leases.run()

    return [_sweeper(runtime, interval, book, leases), lease_keeper, follower]


def _sweeper(runtime: Runtime, interval: float, book: Any, leases: Any) -> BackgroundTask:
    async def sweeper() -> None:
        """Stale prices, reminders and periodic snapshots happen with time, not events."""
        from fusion_prime.risk import live
        from fusion_prime.risk.repository import prune_book_changes
        from fusion_prime.risk.service import sweep

        try:
            if book is not None and not book.ready.is_set():
                await live.load(book, runtime.sessions, leases)
            while True:
                await asyncio.sleep(interval)
                async with runtime.sessions() as session, session.begin():
                    out = await sweep(session)
                    await prune_book_changes(session, BOOK_CHANGES_KEPT)
                if out.changed:
                    log.info(
                        "sweep",
                        evaluated=out.evaluated,
                        changed=out.changed,
                        events=len(out.events),
                    )
        except asyncio.CancelledError:  # shutting down (a crash restarts with the book kept)
            if book is not None:
                live.unregister(book)
            raise

    return sweeper


# other instances' changes are applied on NOTIFY; this poll covers a missed notification
FOLLOW_POLL_SECONDS = 2.0
# a book reads book_changes forward from its load; an hour covers any pause of a pass
BOOK_CHANGES_KEPT = timedelta(hours=1)


SPEC = ServiceSpec(
    name="risk",
    db_slug="risk",
    default_port=8103,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=_routers,
    settings_cls=RiskSettings,
    background=_background,
    description="margin health, snapshots and margin events",
    publishes=("alerts.margin.v1",),
)
