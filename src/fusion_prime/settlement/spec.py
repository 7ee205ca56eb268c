"""The settlement service as the platform sees it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncConnection

from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.runtime import BackgroundTask, Runtime
from fusion_prime.platform.spec import ServiceSpec
from fusion_prime.settlement.settings import SettlementSettings

log = get_logger(__name__)


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    from fusion_prime.settlement.service import expire_submitted, submit_received
    from fusion_prime.settlement.webhooks import DeliveryWorker

    settings = runtime.settings
    assert isinstance(settings, SettlementSettings)
    worker = DeliveryWorker(runtime.sessions, settings)

    async def submit_commands() -> None:
        """Hand received commands to the signer; fail submitted ones that timed out."""
        while True:
            async with runtime.sessions() as session, session.begin():
                done = await submit_received(session)
                await expire_submitted(session, settings.command_timeout)
            if done == 0:
                await asyncio.sleep(settings.command_poll_interval)

    async def read_pool() -> None:
        """Own a small asyncpg pool for hot single-statement reads for the app's lifetime."""
        import asyncpg

        from fusion_prime.platform.admin import asyncpg_dsn
        from fusion_prime.settlement.api import READ_POOL

        pool = await asyncpg.create_pool(
            asyncpg_dsn(runtime.url),
            min_size=1,
            max_size=4,
            server_settings={"application_name": "settlement-reads"},
        )
        runtime.state[READ_POOL] = pool
        try:
            await asyncio.Event().wait()
        finally:
            runtime.state.pop(READ_POOL, None)
            await pool.close()

    tasks = [worker.run, submit_commands, read_pool]
    if settings.relayer_enabled:
        from fusion_prime.settlement.relayer import Relayer

        tasks.append(Relayer.from_settings(runtime.engine, settings).run)
    return tasks


async def _readiness(conn: AsyncConnection) -> dict[str, Any]:
    """The relayer's checkpoint, head and lag per chain (empty list before it first ran)."""
    from fusion_prime.settlement.relayer import relayer_status

    return {"relayer": await relayer_status(conn)}


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.settlement.api import router

    return [router]


SPEC = ServiceSpec(
    name="settlement",
    db_slug="settlement",
    default_port=8101,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=_routers,
    settings_cls=SettlementSettings,
    background=_background,
    description="escrows from chain events, settlement commands, history, signed webhooks",
    publishes=("settlement.escrows.v1", "settlement.commands.v1", "settlement.events.v1"),
    required_secrets=("SETTLEMENT_WEBHOOK_KEY",),
    readiness=_readiness,
)
