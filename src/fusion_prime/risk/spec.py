"""The risk service: margin health of every account on every price tick."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

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


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.risk.api import router

    return [router]


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    settings = runtime.settings
    interval = settings.sweep_interval if isinstance(settings, RiskSettings) else 30.0
    book = None
    if isinstance(settings, RiskSettings) and settings.book == "memory":
        from fusion_prime.risk import live

        # registered now, before the consumers start: they and the API wait until loaded
        book = live.LiveBook(runtime.url)
        live.register(book)
        runtime.state["book"] = book

    async def sweeper() -> None:
        """Stale prices, reminders and periodic snapshots happen with time, not events."""
        from fusion_prime.risk import live
        from fusion_prime.risk.repository import prune_book_changes
        from fusion_prime.risk.service import sweep

        try:
            if book is not None and not book.ready.is_set():
                await live.load(book, runtime.sessions)
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

    return [sweeper]


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
