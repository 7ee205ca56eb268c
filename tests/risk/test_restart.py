"""Risk data survives a kill -9 of the real service process (checked in the database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.risk.handlers import handle_prices
from fusion_prime.risk.spec import SPEC
from tests.harness import ServiceProcess, count_rows, fetch, running
from tests.risk.conftest import PARAMS, price_event


async def test_state_survives_kill9_and_restart(
    make_database: Callable[..., Awaitable[str]], log_dir: Path
) -> None:
    url = await make_database("risk", SPEC.migrations_dir)
    proc = ServiceProcess.for_service(
        "risk", url, log_dir, extra_env={"RISK_SWEEP_INTERVAL": "0.5"}
    )
    with running(proc):
        async with proc.async_client(timeout=10) as c:
            for asset, p in PARAMS.items():
                r = await c.put(
                    f"/risk-parameters/{asset}", json={**p, "max_price_age_seconds": 60}
                )
                assert r.status_code == 201, r.text
            engine = create_async_engine(normalise_database_url(url, service="risk"))
            try:
                async with async_sessionmaker(engine)() as s, s.begin():
                    envs = [price_event("ETH", "3000"), price_event("USDC", "1")]
                    await consume_batch(s, "risk-engine-prices-consumer", envs, handle_prices)
            finally:
                await engine.dispose()
            r = await c.put(
                "/accounts/acct-9/positions",
                json={
                    "positions": [
                        {"asset": "ETH", "collateral": str(10**18), "decimals": 18},
                        {"asset": "USDC", "debt": str(2300 * 10**6), "decimals": 6},
                    ]
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["health"]["status"] == "margin_call"  # 2400 / 2300
            before = (await c.get("/accounts/acct-9/events")).json()["events"]
        proc.kill9()
        # straight from the database after the kill
        assert await count_rows(url, "positions", "account_id = 'acct-9'") == 2
        state = await fetch(url, "SELECT status, known_tier FROM account_state")
        assert [tuple(r) for r in state] == [("margin_call", "margin_call")]
        assert await count_rows(url, "margin_events") == len(before) == 1
        assert await count_rows(url, "outbox", "topic = 'alerts.margin.v1'") == 1
        assert await count_rows(url, "health_snapshots") == 1
        assert await count_rows(url, "risk_parameters") == 3
        proc.start()
        proc.wait_ready()
        async with proc.async_client(timeout=10) as c:
            after = (await c.get("/accounts/acct-9/events")).json()["events"]
            assert after == before
            health = (await c.get("/accounts/acct-9/health")).json()
            assert health["status"] == "margin_call"
            assert health["factor"].startswith("1.0434782608")
            stats = (await c.get("/stats")).json()
            assert stats["accounts"] == 1
        # the background sweep of the real process notices a price going stale
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute("UPDATE prices SET source_time = now() - interval '2 hours'")
        finally:
            await conn.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if await count_rows(url, "margin_events", "event_type = 'margin.price_unavailable'"):
                break
            await asyncio.sleep(0.2)
        assert await count_rows(url, "account_state", "status = 'unknown_price'") == 1
        await asyncio.sleep(1.5)  # several more sweeps: still one event for the episode
        assert (
            await count_rows(url, "margin_events", "event_type = 'margin.price_unavailable'") == 1
        )
