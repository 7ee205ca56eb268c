"""Rounds through the real stack: fake APIs over HTTP, the oracle database, its outbox.
Every assertion reads the tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fusion_prime.oracle.domain import Observation
from fusion_prime.oracle.poller import prune_observations
from fusion_prime.oracle.service import store_round
from fusion_prime.risk.handlers import PriceUpdated
from tests.harness import count_rows, fetch, fetchval
from tests.oracle.conftest import ETH, USDC, Oracle, feed
from tests.oracle.fakes import FakeApis


async def outbox(url: str) -> list[dict[str, object]]:
    rows = await fetch(url, "SELECT event_type, envelope FROM outbox ORDER BY seq")
    return [{"type": r["event_type"], **json.loads(r["envelope"])} for r in rows]


async def test_a_round_stores_everything_and_publishes_what_risk_consumes(
    oracle: Oracle, apis: FakeApis
) -> None:
    apis.state.set_all(ETH, "3000.10")
    apis.state.set("coinbase", "ETH-USD", "3000.30")
    apis.state.set_all(USDC, "1.0001")
    await oracle.put(feed("ETH-USD", ETH, quorum=3))
    await oracle.put(feed("USDC-USD", USDC))
    before = datetime.now(UTC)
    report = await oracle.round()
    assert {o.result.feed.pair: o.published for o in report.outcomes} == {
        "ETH-USD": "first",
        "USDC-USD": "first",
    }
    assert await count_rows(oracle.url, "observations") == 6
    assert await count_rows(oracle.url, "observations", "status = 'used'") == 6
    agg = (await fetch(oracle.url, "SELECT * FROM aggregates WHERE pair = 'ETH-USD'"))[0]
    assert agg["price"] == Decimal("3000.10")  # median of 3000.10, 3000.10, 3000.10, 3000.30
    assert agg["published"] is True
    assert agg["publish_reason"] == "first"
    events = await outbox(oracle.url)
    assert [e["type"] for e in events] == ["price.updated", "price.updated"]
    eth = next(e for e in events if e["subject"] == "ETH")
    assert str(eth["id"]) == str(agg["event_id"])
    data = eth["data"]
    assert isinstance(data, dict)
    # exactly what the risk engine's consumer validates today, unchanged
    p = PriceUpdated.model_validate(data)
    assert (p.asset, p.price) == ("ETH", Decimal("3000.10"))
    assert p.source == "oracle:median(binance,coinbase,coingecko,kraken)"
    assert before <= p.source_time <= datetime.now(UTC)
    assert data["pair"] == "ETH-USD"
    assert data["spread"] == str(Decimal("0.20") / Decimal("3000.10"))
    assert {s["source"]: s["value"] for s in data["sources"]} == {
        "binance": "3000.10",
        "coinbase": "3000.30",
        "coingecko": "3000.10",
        "kraken": "3000.10",
    }
    assert "observed_at" in data
    raw = json.dumps(data)
    assert "3000.1," not in raw  # never a JSON number
    health = {r["source"]: r for r in await fetch(oracle.url, "SELECT * FROM source_health")}
    assert health["kraken"]["successes"] == 2
    assert health["coinbase"]["failures"] == 0


async def test_an_outlier_is_stored_as_such_and_left_out_of_the_price(
    oracle: Oracle, apis: FakeApis
) -> None:
    apis.state.set_all(ETH, "3000")
    apis.state.set("binance", "ETHUSDT", "3300")  # 10 % off
    await oracle.put(feed("ETH-USD", ETH))
    await oracle.round()
    rows = await fetch(oracle.url, "SELECT source, status, value, error FROM observations")
    by = {r["source"]: r for r in rows}
    assert by["binance"]["status"] == "outlier"
    assert by["binance"]["value"] == Decimal(3300)
    assert "from the median" in by["binance"]["error"]
    assert {r["status"] for s, r in by.items() if s != "binance"} == {"used"}
    assert await fetchval(oracle.url, "SELECT price FROM aggregates") == Decimal(3000)
    data = (await outbox(oracle.url))[0]["data"]
    assert isinstance(data, dict)
    assert "binance" not in data["source"]
    assert "binance" not in {s["source"] for s in data["sources"]}


async def test_quorum_loss_and_recovery_each_publish_one_event(
    oracle: Oracle, apis: FakeApis
) -> None:
    apis.state.set_all(ETH, "3000")
    await oracle.put(feed("ETH-USD", ETH, quorum=3))
    await oracle.round()
    apis.state.mode("kraken", "error")
    apis.state.mode("coinbase", "garbage")
    for _ in range(3):  # three rounds without quorum
        report = await oracle.round()
        assert report.outcomes[0].result.aggregate is None
    state = (await fetch(oracle.url, "SELECT * FROM feed_state"))[0]
    assert state["status"] == "degraded"
    assert state["reason"].startswith("quorum not met: 2 usable of 3 required")
    assert "kraken: error" in state["reason"]
    types = [e["type"] for e in await outbox(oracle.url)]
    assert types == ["price.updated", "price.unavailable"]
    unavailable = (await outbox(oracle.url))[1]["data"]
    assert isinstance(unavailable, dict)
    assert unavailable["last_price"] == "3000"
    assert await count_rows(oracle.url, "aggregates") == 1  # no price while degraded

    apis.state.mode("kraken", "ok")
    apis.state.mode("coinbase", "ok")
    await oracle.round()
    await oracle.round()  # same price again: nothing more to publish
    events = await outbox(oracle.url)
    assert [e["type"] for e in events] == ["price.updated", "price.unavailable", "price.updated"]
    recovered = events[2]["data"]
    assert isinstance(recovered, dict)
    assert recovered["reason"] == "recovered"
    assert (await fetch(oracle.url, "SELECT status, reason FROM feed_state"))[0]["status"] == "ok"
    health = {r["source"]: r for r in await fetch(oracle.url, "SELECT * FROM source_health")}
    assert health["kraken"]["failures"] == 3
    assert health["kraken"]["last_error"].startswith("ETH-USD: kraken error")
    assert health["coinbase"]["last_error"].startswith("ETH-USD: response is not JSON")


async def test_heartbeat_and_deviation_decide_what_is_published(oracle: Oracle) -> None:
    f = await oracle.put(
        feed(
            "ETH-USD",
            {"coinbase": "ETH-USD", "kraken": "ETHUSD"},
            heartbeat_seconds=600,
            deviation=Decimal("0.01"),
        )
    )
    t0 = datetime.now(UTC) - timedelta(hours=2)

    async def round_at(offset: int, price: str) -> str | None:
        now = t0 + timedelta(seconds=offset)
        obs = [
            Observation("ETH-USD", k, Decimal(price), now, now, 5) for k in ("coinbase", "kraken")
        ]
        outcomes = await oracle.run(store_round, [f], {"ETH-USD": obs}, now)
        return outcomes[0].published

    assert await round_at(0, "2000") == "first"
    assert await round_at(30, "2019.99") is None  # 0.9995 % < 1 %
    assert await round_at(60, "2020") == "deviation"  # 1 % of the last published 2000
    assert await round_at(90, "2000") is None  # 0.99 % of 2020
    assert await round_at(659, "2001") is None
    assert await round_at(660, "2001") == "heartbeat"  # 600 s after the last publication
    rows = await fetch(
        oracle.url, "SELECT price, published, publish_reason FROM aggregates ORDER BY observed_at"
    )
    assert [(r["published"], r["publish_reason"]) for r in rows] == [
        (True, "first"),
        (False, None),
        (True, "deviation"),
        (False, None),
        (False, None),
        (True, "heartbeat"),
    ]
    assert await count_rows(oracle.url, "outbox") == 3
    prices = [
        json.loads(r["envelope"])["data"]["price"]
        for r in await fetch(oracle.url, "SELECT envelope FROM outbox ORDER BY seq")
    ]
    assert prices == ["2000", "2020", "2001"]


async def test_a_stale_source_is_recorded_and_not_used(oracle: Oracle, apis: FakeApis) -> None:
    apis.state.set_all(ETH, "3000")
    apis.state.set("coinbase", "ETH-USD", "2900")
    apis.state.mode("coinbase", "ok", age=300)  # its own time is 5 minutes old
    apis.state.mode("coingecko", "stale")
    await oracle.put(feed("ETH-USD", ETH, max_source_age_seconds=120))
    await oracle.round()
    by = {r["source"]: r for r in await fetch(oracle.url, "SELECT * FROM observations")}
    assert by["coinbase"]["status"] == "stale"
    assert by["coinbase"]["value"] == Decimal(2900)
    assert by["coingecko"]["status"] == "stale"
    assert by["kraken"]["status"] == "used"
    assert await fetchval(oracle.url, "SELECT price FROM aggregates") == Decimal(3000)


async def test_raw_observations_past_retention_are_deleted(oracle: Oracle, apis: FakeApis) -> None:
    apis.state.set_all(ETH, "3000")
    await oracle.put(feed("ETH-USD", ETH))
    await oracle.round()
    await oracle.round()
    old = datetime.now(UTC) - timedelta(days=40)
    await fetch(oracle.url, "UPDATE observations SET observed_at = $1 WHERE id <= 4", old)
    deleted = await prune_observations(oracle.sessions, timedelta(days=30), batch=3)
    assert deleted == 4
    assert await count_rows(oracle.url, "observations") == 4
    assert await count_rows(oracle.url, "aggregates") == 2  # aggregates are history: kept
