"""End to end: a price round in the oracle process changes an account's health in the risk
process, through the bus (postgres broker in a shared bus database). Sources are a real
local HTTP server answering like Coinbase and Kraken."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from fusion_prime.oracle.spec import SPEC as ORACLE
from fusion_prime.risk.spec import SPEC as RISK
from tests.e2e.conftest import BUS_ENV, prepare_bus, start_all
from tests.harness import BUS_MIGRATIONS_DIR, DatabaseFactory, ServiceProcess, fetch
from tests.oracle.fakes import FakeApis, fake_apis
from tests.settlement.factory import wait_for

ETH = {"coinbase": "ETH-USD", "kraken": "ETHUSD"}
USDC = {"kraken": "USDCUSD", "coingecko": "usd-coin"}


@pytest.fixture(scope="module")
def apis() -> Iterator[FakeApis]:
    with fake_apis() as a:
        yield a


@pytest.fixture(scope="module")
async def procs(
    db_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory, apis: FakeApis
) -> AsyncIterator[dict[str, tuple[ServiceProcess, str]]]:
    """name -> (process, its database URL)"""
    log_dir = tmp_path_factory.mktemp("oracle-risk-logs")
    bus = await db_factory.create("bus", BUS_MIGRATIONS_DIR)
    dbs = {
        "oracle": await db_factory.create("oracle", ORACLE.migrations_dir),
        "risk": await db_factory.create("risk", RISK.migrations_dir),
    }
    started: dict[str, ServiceProcess] = {}
    try:
        await prepare_bus(bus)
        env = {"FP_BUS_URL": bus, **BUS_ENV, "PRICE_UPDATE_INTERVAL": "0.3", **apis.env()}
        started = {
            n: ServiceProcess.for_service(n, u, log_dir, extra_env=env) for n, u in dbs.items()
        }
        await asyncio.to_thread(start_all, list(started.values()))
        yield {n: (p, dbs[n]) for n, p in started.items()}
    finally:
        for p in started.values():
            p.terminate()
        for url in [bus, *dbs.values()]:
            await db_factory.drop(url)


async def test_an_oracle_round_moves_an_account_across_tiers(
    procs: dict[str, tuple[ServiceProcess, str]], apis: FakeApis
) -> None:
    (oracle, oracle_db), (risk, risk_db) = procs["oracle"], procs["risk"]
    account = f"acct-{uuid.uuid4().hex[:8]}"
    apis.state.set_all(ETH, "3500")
    apis.state.set_all(USDC, "1")
    async with httpx.AsyncClient(timeout=10) as http:
        for asset, lt, decimals in (("ETH", "0.80", 18), ("USDC", "0.85", 6)):
            r = await http.put(
                f"{risk.base_url}/risk-parameters/{asset}",
                headers=risk.headers,
                json={"ltv": "0.75", "liquidation_threshold": lt, "liquidation_bonus": "0.05",
                      "decimals": decimals, "max_price_age_seconds": 3600},
            )  # fmt: skip
            assert r.status_code == 201, r.text
        for pair, symbols in (("ETH-USD", ETH), ("USDC-USD", USDC)):
            body = {"sources": [{"kind": k, "symbol": s} for k, s in symbols.items()]}
            r = await http.put(f"{oracle.base_url}/feeds/{pair}", json=body, headers=oracle.headers)
            assert r.status_code == 201, r.text
        r = await http.put(
            f"{risk.base_url}/accounts/{account}/positions",
            headers=risk.headers,
            json={"positions": [
                {"asset": "ETH", "collateral": str(10**18), "debt": "0", "decimals": 18},
                {"asset": "USDC", "collateral": "0", "debt": str(2000 * 10**6), "decimals": 6},
            ]},
        )  # fmt: skip
        assert r.status_code == 200, r.text

        async def status() -> str | None:
            h = (
                await http.get(f"{risk.base_url}/accounts/{account}/health", headers=risk.headers)
            ).json()
            return h.get("status")

        async def is_(tier: str) -> bool:
            return await status() == tier

        await wait_for(lambda: is_("healthy"), timeout=30)  # 3500 x 0.8 / 2000 = 1.4
        # both exchanges move: 2600 x 0.8 / 2000 = 1.04 -> margin call
        apis.state.set_all(ETH, "2600")
        await wait_for(lambda: is_("margin_call"), timeout=30)

    stored = await fetch(risk_db, "SELECT price, source, event_id FROM prices WHERE asset = 'ETH'")
    assert str(stored[0]["price"]) == "2600"
    assert stored[0]["source"] == "oracle:median(coinbase,kraken)"
    # the event risk applied is the one the oracle stored with that aggregate
    agg = await fetch(
        oracle_db,
        "SELECT price, event_id FROM aggregates WHERE pair = 'ETH-USD' AND published "
        "ORDER BY observed_at DESC LIMIT 1",
    )
    assert agg[0]["event_id"] == stored[0]["event_id"]
    events = await fetch(
        risk_db, "SELECT to_tier, prices FROM margin_events WHERE account_id = $1", account
    )
    assert events[-1]["to_tier"] == "margin_call"
    assert json.loads(events[-1]["prices"])["ETH"] == "2600"
