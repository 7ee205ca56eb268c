"""The risk service: margin health of every account on every price tick."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

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


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.risk.api import router

    return [router]


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    settings = runtime.settings
    interval = settings.sweep_interval if isinstance(settings, RiskSettings) else 30.0

    async def sweeper() -> None:
        """Stale prices, reminders and periodic snapshots happen with time, not events."""
        from fusion_prime.risk.service import sweep

        while True:
            await asyncio.sleep(interval)
            async with runtime.sessions() as session, session.begin():
                out = await sweep(session)
            if out.changed:
                log.info(
                    "sweep", evaluated=out.evaluated, changed=out.changed, events=len(out.events)
                )

    return [sweeper]


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
