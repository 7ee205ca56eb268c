"""The price oracle: prices from several sources, aggregated, stored and published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter

from fusion_prime.oracle.settings import OracleSettings
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.runtime import BackgroundTask, Runtime
from fusion_prime.platform.spec import ServiceSpec

log = get_logger(__name__)
PRUNE_INTERVAL = 3600.0


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.oracle.api import router

    return [router]


def _settings(runtime: Runtime) -> OracleSettings:
    settings = runtime.settings
    assert isinstance(settings, OracleSettings)
    return settings


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    settings = _settings(runtime)

    async def poller() -> None:
        """A round every PRICE_UPDATE_INTERVAL seconds, measured start to start."""
        from fusion_prime.oracle.poller import poll_once

        sources = settings.source_set()
        had_feeds = True
        try:
            while True:
                started = time.monotonic()
                report = await poll_once(runtime.sessions, sources)
                if had_feeds and not report.outcomes:
                    log.warning("no enabled feeds: run `fusion-prime oracle init` or PUT /feeds")
                had_feeds = bool(report.outcomes)
                published = [o.result.feed.pair for o in report.outcomes if o.published]
                degraded = [o.result.feed.pair for o in report.outcomes if o.result.reason]
                if published or degraded:
                    log.info("round", published=published, degraded=degraded,
                             collect_s=round(report.collect_seconds, 3))  # fmt: skip
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(settings.price_update_interval - elapsed, 0.0))
        finally:
            await sources.close()

    async def pruner() -> None:
        from fusion_prime.oracle.poller import prune_observations

        retention = timedelta(days=settings.observation_retention_days)
        while True:
            deleted = await prune_observations(runtime.sessions, retention)
            if deleted:
                log.info("observations past retention deleted", count=deleted)
            await asyncio.sleep(PRUNE_INTERVAL)

    return [poller, pruner]


SPEC = ServiceSpec(
    name="oracle",
    db_slug="priceoracle",
    default_port=8104,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=_routers,
    settings_cls=OracleSettings,
    background=_background,
    description="prices from several sources: quorum, staleness, outliers; history and TWAP",
    publishes=("market.prices.v1",),
)
