"""Kraken `GET /0/public/Ticker?pair=` (errors in `error`, last trade in `c[0]`).

Kraken sends no time with a ticker: the time of its answer is the observation's time.
The result is keyed by Kraken's own pair name (XXBTZUSD for XBTUSD), so a single result
is taken whatever its key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fusion_prime.oracle.sources.base import HttpSource, Quote, SourceError, obj, price


class Kraken(HttpSource):
    kind = "kraken"

    async def fetch(self, symbol: str) -> Quote:
        status, body = await self.get_json("/0/public/Ticker", {"pair": symbol})
        received = datetime.now(UTC)
        b = obj(body, "response") if status == 200 else None
        if b is None:
            raise self.http_error(status, body, ("error",))
        errors = b.get("error")
        if errors:
            raise SourceError(f"kraken error: {'; '.join(str(e) for e in errors)[:160]}")
        result = obj(b.get("result"), "result")
        if symbol in result:
            ticker = result[symbol]
        elif len(result) == 1:
            ticker = next(iter(result.values()))
        else:
            raise SourceError(f"result has no pair {symbol} ({len(result)} pairs)")
        last = obj(ticker, "ticker").get("c")
        if not isinstance(last, list) or not last:
            raise SourceError("last trade `c` is missing")
        return Quote(price(last[0], "last trade price"), received)
