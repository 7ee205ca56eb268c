"""Coinbase Exchange `GET /products/{product}/ticker` (last trade, bid/ask, `time`)."""

from __future__ import annotations

from fusion_prime.oracle.sources.base import HttpSource, Quote, SourceError, iso_time, obj, price


class Coinbase(HttpSource):
    kind = "coinbase"

    async def fetch(self, symbol: str) -> Quote:
        status, body = await self.get_json(f"/products/{symbol}/ticker", {})
        if status != 200:
            raise self.http_error(status, body, ("message",))
        t = obj(body, "ticker")
        value = price(t.get("price"), "price")
        bid, ask = t.get("bid"), t.get("ask")
        if bid is not None and ask is not None and price(bid, "bid") > price(ask, "ask"):
            raise SourceError("bid above ask")
        return Quote(value, iso_time(t.get("time"), "time"))
