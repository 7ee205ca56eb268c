"""Settings shared by every service process.

DATABASE_URL deliberately has no default: a missing value must stop the process
(see the persistence rule in DESIGN.md), never select a fallback store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]
BusKind = Literal["postgres", "pubsub"]


class BaseServiceSettings(BaseSettings):
    """Fields every service reads from the environment."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    fp_env: Environment = Field(default="development", alias="FP_ENV")
    fp_bus: BusKind = Field(default="postgres", alias="FP_BUS")
    fp_bus_url: str | None = Field(default=None, alias="FP_BUS_URL")
    gcp_project: str | None = Field(default=None, alias="GCP_PROJECT")
    db_connect_timeout: float = Field(default=30.0, alias="FP_DB_CONNECT_TIMEOUT", gt=0)
    db_pool_size: int = Field(default=10, alias="FP_DB_POOL_SIZE", ge=1)
    log_level: str = Field(default="INFO", alias="FP_LOG_LEVEL")
    # event bus tuning (see docs/events.md); all have safe defaults
    bus_visibility_timeout: float = Field(default=30.0, alias="FP_BUS_VISIBILITY_TIMEOUT", gt=0)
    bus_batch_size: int = Field(default=500, alias="FP_BUS_BATCH_SIZE", ge=1, le=10_000)
    bus_consumer_concurrency: int = Field(
        default=2, alias="FP_BUS_CONSUMER_CONCURRENCY", ge=1, le=16
    )
    bus_poll_interval: float = Field(default=1.0, alias="FP_BUS_POLL_INTERVAL", gt=0)
    bus_retry_base: float = Field(default=2.0, alias="FP_BUS_RETRY_BASE", ge=0)
    bus_retry_max: float = Field(default=300.0, alias="FP_BUS_RETRY_MAX", ge=0)
    bus_retention: float = Field(default=86_400.0, alias="FP_BUS_RETENTION_SECONDS", ge=0)
    # an outbox row the broker refused this many times is dead-lettered (left in the outbox,
    # no longer relayed) so the rows behind it keep flowing
    bus_relay_max_attempts: int = Field(default=5, alias="FP_BUS_RELAY_MAX_ATTEMPTS", ge=1)
    push_audience: str | None = Field(default=None, alias="FP_PUSH_AUDIENCE")
    push_service_account: str | None = Field(default=None, alias="FP_PUSH_SERVICE_ACCOUNT")
    push_certs_url: str = Field(
        default="https://www.googleapis.com/oauth2/v1/certs", alias="FP_PUSH_CERTS_URL"
    )

    # how long a verified API key is trusted before its row is read again: the bounded
    # delay after which a revoked key stops working (docs/auth.md)
    auth_cache_seconds: float = Field(default=10.0, alias="FP_AUTH_CACHE_SECONDS", ge=0, le=300)
    # per-key token bucket of this process (docs/auth.md): sustained requests/s and burst
    rate_limit_per_second: float = Field(default=50.0, alias="FP_RATE_LIMIT_PER_SECOND", gt=0)
    rate_limit_burst: int = Field(default=200, alias="FP_RATE_LIMIT_BURST", ge=1)
    max_body_bytes: int = Field(default=1_048_576, alias="FP_MAX_BODY_BYTES", ge=1024)
    # service-to-service callers with Google ID tokens (production): the audience the
    # tokens must carry, and "email=role,email=role" of the service accounts allowed
    auth_oidc_audience: str | None = Field(default=None, alias="FP_AUTH_OIDC_AUDIENCE")
    auth_service_accounts: str = Field(default="", alias="FP_AUTH_SERVICE_ACCOUNTS")
    # development and tests only: let webhooks, Slack and SMS targets be http:// and on
    # loopback/private addresses (refused with FP_ENV=production); platform/targets.py
    outbound_allow_private: bool = Field(default=False, alias="FP_OUTBOUND_ALLOW_PRIVATE")

    @model_validator(mode="after")
    def _no_private_targets_in_production(self) -> BaseServiceSettings:
        if self.outbound_allow_private and self.fp_env == "production":
            raise ValueError("FP_OUTBOUND_ALLOW_PRIVATE=true is refused when FP_ENV=production")
        if self.auth_oidc_audience:
            from fusion_prime.platform.auth import parse_service_accounts

            if not parse_service_accounts(self.auth_service_accounts):
                raise ValueError(
                    "FP_AUTH_OIDC_AUDIENCE needs FP_AUTH_SERVICE_ACCOUNTS=EMAIL=ROLE,..."
                )
        return self

    @property
    def production(self) -> bool:
        return self.fp_env == "production"
