"""The oracle as real processes: `fusion-prime serve oracle` killed -9 and restarted, and
the operator commands `fusion-prime oracle init|poll-once|sources`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from fusion_prime.oracle.spec import SPEC
from tests.harness import REPO_ROOT, ServiceProcess, _env, count_rows, fetch, fetchval
from tests.oracle.conftest import ETH
from tests.oracle.fakes import FakeApis
from tests.settlement.factory import wait_for


async def test_a_restart_keeps_history_state_and_does_not_republish(
    make_database: Callable[..., Awaitable[str]], apis: FakeApis, log_dir: Path
) -> None:
    url = await make_database("oracle", SPEC.migrations_dir)
    apis.state.set_all(ETH, "3100")
    env = {"PRICE_UPDATE_INTERVAL": "0.2", "FP_BUS_POLL_INTERVAL": "0.2", **apis.env()}
    proc = ServiceProcess.for_service("oracle", url, log_dir, extra_env=env)
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready, 60)
        body = {"sources": [{"kind": k, "symbol": s} for k, s in ETH.items()]}
        r = httpx.put(f"{proc.base_url}/feeds/ETH-USD", json=body, timeout=10, headers=proc.headers)
        assert r.status_code == 201, r.text

        async def rounds(n: int) -> bool:
            return await count_rows(url, "aggregates") >= n

        await wait_for(lambda: rounds(3), timeout=30)
        # the relay moved the event to the bus (its own process loop)
        await wait_for(lambda: count_rows(url, "outbox", "published_at IS NOT NULL"), timeout=30)
        await asyncio.to_thread(proc.kill9)
        first = await fetch(url, "SELECT id, price, observed_at FROM aggregates ORDER BY id")
        observed = await count_rows(url, "observations")
        assert observed >= 12

        proc.start()
        await asyncio.to_thread(proc.wait_ready, 60)
        await wait_for(lambda: rounds(len(first) + 3), timeout=30)
        again = await fetch(url, "SELECT id, price, observed_at FROM aggregates ORDER BY id")
        assert again[: len(first)] == first  # history survived, untouched
        assert await count_rows(url, "observations") > observed
        assert await fetchval(url, "SELECT max(version) FROM feeds") == 1
        # the state survived too: the same price is not announced again after the restart
        events = await fetch(url, "SELECT event_type, envelope FROM outbox")
        assert [e["event_type"] for e in events] == ["price.updated"]
        assert json.loads(events[0]["envelope"])["data"]["price"] == "3100"
        r = httpx.get(f"{proc.base_url}/prices/ETH-USD", timeout=10, headers=proc.headers)
        assert r.json()["price"] == "3100"
    finally:
        await asyncio.to_thread(proc.terminate)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "oracle", *args],
        env=_env(env.pop("DATABASE_URL"), {"COLUMNS": "220", **env}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_operator_commands(
    make_database: Callable[..., Awaitable[str]], apis: FakeApis
) -> None:
    url = await make_database("oracle", SPEC.migrations_dir)
    apis.state.set_all(
        {"coinbase": "ETH-USD", "kraken": "XETHZUSD", "binance": "ETHUSDT",
         "coingecko": "ethereum"}, "2999.5"
    )  # fmt: skip
    out = await asyncio.to_thread(cli, "init", env={"DATABASE_URL": url})
    assert out.returncode == 0, out.stderr
    assert "created: ETH-USD, WBTC-USD, USDC-USD" in out.stdout
    assert await count_rows(url, "feeds") == 3

    out = await asyncio.to_thread(cli, "poll-once", env={"DATABASE_URL": url, **apis.env()})
    assert out.returncode == 0, out.stderr
    assert "2999.5" in out.stdout
    assert "published (first)" in out.stdout
    assert "quorum not met" in out.stdout  # WBTC and USDC: the fakes know no such symbols
    assert await count_rows(url, "aggregates") == 1
    assert await count_rows(url, "observations") == 4 + 4 + 2  # Chainlink: no ETH_RPC_URL
    types = [r["event_type"] for r in await fetch(url, "SELECT event_type FROM outbox")]
    assert sorted(types) == ["price.unavailable", "price.unavailable", "price.updated"]

    out = await asyncio.to_thread(cli, "sources", env={"DATABASE_URL": url})
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "coinbase" in ln]
    assert lines
    assert "0.5" in lines[0]  # one of two coinbase symbols answered
