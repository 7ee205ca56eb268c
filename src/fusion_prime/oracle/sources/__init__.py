"""Price sources (one adapter per API) and the parallel collection of one round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from fusion_prime.oracle.domain import Feed, Observation, SourceRef
from fusion_prime.oracle.sources.base import Source, SourceError
from fusion_prime.oracle.sources.binance import Binance
from fusion_prime.oracle.sources.coinbase import Coinbase
from fusion_prime.oracle.sources.coingecko import CoinGecko
from fusion_prime.oracle.sources.kraken import Kraken


@dataclass(frozen=True)
class SourceUrls:
    coinbase: str
    kraken: str
    binance: str
    coingecko: str
    eth_rpc: str | None


@dataclass
class SourceSet:
    """The configured adapters of a process, sharing one HTTP client (its own pool)."""

    timeout: float
    sources: dict[str, Source] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """One HTTP session for every source, made in the running loop on first use.

        No connection limit: every request of a round is in flight at once, so one slow
        source never queues the others behind it."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),
                headers={"Accept": "application/json", "User-Agent": "fusion-prime-oracle"},
            )
        return self._session

    @classmethod
    def from_urls(cls, urls: SourceUrls, timeout: float) -> SourceSet:
        out = cls(timeout)
        out.sources = {
            "coinbase": Coinbase(urls.coinbase, out.session),
            "kraken": Kraken(urls.kraken, out.session),
            "binance": Binance(urls.binance, out.session),
            "coingecko": CoinGecko(urls.coingecko, out.session),
        }
        if urls.eth_rpc:
            from fusion_prime.oracle.sources.chainlink import Chainlink

            out.sources["chainlink"] = Chainlink(urls.eth_rpc, timeout)
        return out

    def configured(self, ref: SourceRef) -> bool:
        return ref.kind in self.sources

    async def observe(self, pair: str, ref: SourceRef) -> Observation:
        """One source's answer or the reason it has none, within the timeout, never raising."""
        started = time.perf_counter()
        value = at = error = None
        try:
            quote = await asyncio.wait_for(self.sources[ref.kind].fetch(ref.symbol), self.timeout)
            value, at = quote.value, quote.source_time
        except TimeoutError:
            error = "timed out"
        except SourceError as exc:
            error = str(exc) or "unusable answer"
        except Exception as exc:  # an adapter bug must not take the round down
            error = f"adapter failed: {type(exc).__name__}: {str(exc)[:120]}"
        latency = int((time.perf_counter() - started) * 1000)
        return Observation(pair, ref.kind, value, at, datetime.now(UTC), latency, error)

    async def collect(self, feeds: Sequence[Feed]) -> dict[str, list[Observation]]:
        """Every configured source of every feed, all in parallel."""
        jobs = [(f.pair, ref) for f in feeds for ref in f.sources if self.configured(ref)]
        results = await asyncio.gather(*(self.observe(pair, ref) for pair, ref in jobs))
        out: dict[str, list[Observation]] = {f.pair: [] for f in feeds}
        for o in results:
            out[o.pair].append(o)
        return out

    async def close(self) -> None:
        for s in self.sources.values():
            await s.close()
        if self._session is not None:
            await self._session.close()
