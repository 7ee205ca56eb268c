"""CoinGecko `GET /api/v3/simple/price?ids=&vs_currencies=usd&include_last_updated_at=true`.

Prices are JSON numbers: parsed as Decimal from the text, never through a float.
"""

from __future__ import annotations

from fusion_prime.oracle.sources.base import (
    HttpSource,
    Quote,
    SourceError,
    obj,
    price,
    unix_time,
)


class CoinGecko(HttpSource):
    kind = "coingecko"

    async def fetch(self, symbol: str) -> Quote:
        params = {"ids": symbol, "vs_currencies": "usd", "include_last_updated_at": "true"}
        status, body = await self.get_json("/api/v3/simple/price", params)
        if status != 200:
            raise self.http_error(status, body, ("error", "status"))
        coin = obj(body, "response").get(symbol)
        if coin is None:
            raise SourceError(f"no price for {symbol}")
        c = obj(coin, symbol)
        return Quote(price(c.get("usd"), "usd"), unix_time(c.get("last_updated_at"), "time"))
