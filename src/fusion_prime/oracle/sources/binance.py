"""Binance `GET /api/v3/ticker/price?symbol=` (`{"symbol","price"}`, errors `{"code","msg"}`).

No time comes with it: the time of the answer is the observation's time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fusion_prime.oracle.sources.base import HttpSource, Quote, SourceError, obj, price


class Binance(HttpSource):
    kind = "binance"

    async def fetch(self, symbol: str) -> Quote:
        status, body = await self.get_json("/api/v3/ticker/price", {"symbol": symbol})
        received = datetime.now(UTC)
        if status != 200:
            raise self.http_error(status, body, ("msg",))
        t = obj(body, "ticker")
        if t.get("symbol") != symbol:
            raise SourceError(f"answer is for {str(t.get('symbol'))[:20]!r}, not {symbol}")
        return Quote(price(t.get("price"), "price"), received)
