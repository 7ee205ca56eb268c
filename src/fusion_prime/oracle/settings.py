"""Settings of the oracle process (feeds and their rules live in the database)."""

from __future__ import annotations

from pydantic import Field

from fusion_prime.oracle.sources import SourceSet, SourceUrls
from fusion_prime.platform.settings import BaseServiceSettings


class OracleSettings(BaseServiceSettings):
    price_update_interval: float = Field(default=30.0, alias="PRICE_UPDATE_INTERVAL", gt=0)
    eth_rpc_url: str | None = Field(default=None, alias="ETH_RPC_URL")
    coinbase_url: str = Field(
        default="https://api.exchange.coinbase.com", alias="ORACLE_COINBASE_URL"
    )
    kraken_url: str = Field(default="https://api.kraken.com", alias="ORACLE_KRAKEN_URL")
    binance_url: str = Field(default="https://api.binance.com", alias="ORACLE_BINANCE_URL")
    coingecko_url: str = Field(default="https://api.coingecko.com", alias="ORACLE_COINGECKO_URL")
    source_timeout: float = Field(default=5.0, alias="ORACLE_SOURCE_TIMEOUT", gt=0, le=60)
    observation_retention_days: float = Field(
        default=30.0, alias="ORACLE_OBSERVATION_RETENTION_DAYS", gt=0
    )

    def source_set(self) -> SourceSet:
        urls = SourceUrls(
            coinbase=self.coinbase_url,
            kraken=self.kraken_url,
            binance=self.binance_url,
            coingecko=self.coingecko_url,
            eth_rpc=self.eth_rpc_url or None,
        )
        return SourceSet.from_urls(urls, self.source_timeout)
