"""The HTTP API through the app (ASGI), its answers checked against the tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from fusion_prime.oracle.domain import Observation
from fusion_prime.oracle.service import store_round
from tests.harness import count_rows, fetch
from tests.oracle.conftest import ETH, Oracle, feed
from tests.oracle.fakes import FakeApis

BODY = {
    "sources": [{"kind": k, "symbol": s} for k, s in ETH.items()],
    "heartbeat_seconds": 1800,
    "deviation": "0.0025",
    "quorum": 3,
}


async def test_feeds_are_versioned(client: httpx.AsyncClient, oracle: Oracle) -> None:
    r = await client.put("/feeds/ETH-USD", json=BODY)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    assert r.json()["deviation"] == "0.0025"
    assert r.json()["outlier_band"] == "0.02"  # defaults
    assert r.json()["max_source_age_seconds"] == 120
    r = await client.put("/feeds/ETH-USD", json={**BODY, "quorum": 2, "enabled": False})
    assert r.status_code == 200
    assert r.json()["version"] == 2
    got = (await client.get("/feeds/ETH-USD")).json()
    assert (got["version"], got["versions"], got["quorum"], got["enabled"]) == (2, 2, 2, False)
    rows = await fetch(oracle.url, "SELECT version, quorum FROM feeds ORDER BY version")
    assert [(r["version"], r["quorum"]) for r in rows] == [(1, 3), (2, 2)]
    listed = (await client.get("/feeds")).json()["feeds"]
    assert [f["pair"] for f in listed] == ["ETH-USD"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/feeds/ETH-USD", {**BODY, "quorum": 5}, "quorum"),
        ("/feeds/ETH-USD", {**BODY, "deviation": 0.01}, "deviation"),
        ("/feeds/ETH-USD", {**BODY, "deviation": "2"}, "deviation"),
        ("/feeds/ETH-USD", {**BODY, "outlier_band": "NaN"}, "outlier_band"),
        ("/feeds/ETH-USD", {**BODY, "sources": [{"kind": "nasdaq", "symbol": "E"}]}, "sources"),
        ("/feeds/ETH-USD", {**BODY, "sources": []}, "sources"),
        ("/feeds/ETH-USD", {**BODY, "colour": "red"}, "colour"),
        ("/feeds/eth", BODY, "pair"),
    ],
)
async def test_bad_feeds_are_422_problems(
    client: httpx.AsyncClient, oracle: Oracle, path: str, body: dict[str, object], field: str
) -> None:
    r = await client.put(path, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()
    assert await count_rows(oracle.url, "feeds") == 0


async def test_unknown_feeds_and_prices_are_404(client: httpx.AsyncClient) -> None:
    for path in (
        "/feeds/DOGE-USD",
        "/prices/DOGE-USD",
        "/prices/DOGE-USD/twap",
        "/prices/DOGE-USD/history",
    ):
        r = await client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_latest_price_and_sources_health(
    client: httpx.AsyncClient, oracle: Oracle, apis: FakeApis
) -> None:
    apis.state.set_all(ETH, "2500.5")
    apis.state.mode("binance", "error")
    await client.put("/feeds/ETH-USD", json=BODY)
    await oracle.round()
    r = await client.get("/prices/ETH-USD")
    assert r.status_code == 200
    body = r.json()
    assert (body["price"], body["status"], body["published"]) == ("2500.5", "ok", True)
    assert sorted(s["source"] for s in body["sources"]) == ["coinbase", "coingecko", "kraken"]
    stored = await fetch(oracle.url, "SELECT price FROM aggregates")
    assert Decimal(body["price"]) == stored[0]["price"]
    health = {s["source"]: s for s in (await client.get("/sources")).json()["sources"]}
    assert health["binance"]["success_rate"] == "0"
    assert health["binance"]["last_error"] == "ETH-USD: HTTP 400: Invalid symbol."
    assert health["kraken"]["success_rate"] == "1"
    assert health["kraken"]["last_success_at"] is not None


async def _series(oracle: Oracle, start: datetime, prices: list[str], step: int) -> None:
    f = await oracle.put(feed("ETH-USD", {"coinbase": "ETH-USD"}, quorum=1))
    for i, p in enumerate(prices):
        at = start + timedelta(seconds=i * step)
        o = Observation("ETH-USD", "coinbase", Decimal(p), at, at, 1)
        await oracle.run(store_round, [f], {"ETH-USD": [o]}, at)


async def test_history_buckets_are_ohlc_of_the_stored_aggregates(
    client: httpx.AsyncClient, oracle: Oracle
) -> None:
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    # every 20 minutes for 3 hours: 9 aggregates, three per hour
    await _series(oracle, start, ["10", "12", "11", "13", "9", "14", "15", "15", "8"], 1200)
    q = {"from": start.isoformat(), "to": (start + timedelta(hours=3)).isoformat()}
    hourly = (await client.get("/prices/ETH-USD/history", params={**q, "interval": "1h"})).json()
    assert [
        (b["open"], b["high"], b["low"], b["close"], b["count"]) for b in hourly["buckets"]
    ] == [
        ("10", "12", "10", "11", 3),
        ("13", "14", "9", "14", 3),
        ("15", "15", "8", "8", 3),
    ]
    two = (await client.get("/prices/ETH-USD/history", params={**q, "interval": "2h"})).json()
    assert [(b["open"], b["high"], b["low"], b["close"]) for b in two["buckets"]] == [
        ("10", "14", "9", "14"),
        ("15", "15", "8", "8"),
    ]
    # sub-hour buckets come from the raw aggregates
    raw = (await client.get("/prices/ETH-USD/history", params={**q, "interval": "40m"})).json()
    assert [b["open"] for b in raw["buckets"]][:2] == ["10", "11"]
    assert sum(b["count"] for b in raw["buckets"]) == 9
    for bad in (
        {**q, "interval": "1x"},
        {**q, "interval": "10s"},
        {"from": q["to"], "to": q["from"]},
        {"from": "2026-11-30T10:00:00"},
        {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:30:00Z"},
        {"to": "0001-01-01T10:00:00Z"},
    ):
        r = await client.get("/prices/ETH-USD/history", params=bad)
        assert r.status_code == 422, (bad, r.text)


async def test_twap_weights_each_price_by_how_long_it_held(
    client: httpx.AsyncClient, oracle: Oracle
) -> None:
    now = datetime.now(UTC)
    # 100 for 10 minutes, then 200 for the last 5: twap over 15 minutes = 133.33...
    await _series(oracle, now - timedelta(minutes=15), ["100", "100", "200"], 300)
    r = await client.get("/prices/ETH-USD/twap", params={"window": "15m"})
    assert r.status_code == 200, r.text
    twap = Decimal(r.json()["twap"])
    assert abs(twap - Decimal("133.3333")) < Decimal("0.2")  # `now` moved on a little
    assert r.json()["points"] == 3
    r = await client.get("/prices/ETH-USD/twap", params={"window": "30d"})
    assert r.status_code == 422
