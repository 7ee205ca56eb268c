"""Settlement settings. The webhook key is a secret: no default, the process refuses to start
without it, exactly like DATABASE_URL (a signing secret stored in clear would be the next
incident report)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from fusion_prime.platform.settings import BaseServiceSettings

DEFAULT_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000"


def parse_schedule(raw: str) -> tuple[float, ...]:
    """Seconds to wait before each retry; the first attempt is always immediate."""
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError("must be comma-separated seconds, e.g. 0,5,300") from exc
    if not values or any(v < 0 for v in values):
        raise ValueError("must list at least one non-negative number of seconds")
    return values


class RelayerSettings(BaseServiceSettings):
    """The chain relayer (`fusion-prime settlement relay`, or inside `serve settlement` when
    ETH_RPC_URL is set). One relayer reads one chain: several chains are several processes,
    each with its own SETTLEMENT_CHAIN_ID and confirmation depth."""

    # A provider URL often embeds an API key: kept secret, never logged.
    eth_rpc_url: SecretStr | None = Field(default=None, alias="ETH_RPC_URL")
    chain_id: int | None = Field(default=None, alias="SETTLEMENT_CHAIN_ID", gt=0)
    factory_address: str | None = Field(default=None, alias="SETTLEMENT_FACTORY_ADDRESS")
    start_block: int = Field(default=0, alias="SETTLEMENT_START_BLOCK", ge=0)
    confirmations: int = Field(default=12, alias="SETTLEMENT_CONFIRMATIONS", ge=0, le=10_000)
    max_block_range: int = Field(
        default=2000, alias="SETTLEMENT_MAX_BLOCK_RANGE", ge=1, le=1_000_000
    )
    reorg_window: int = Field(default=128, alias="SETTLEMENT_REORG_WINDOW", ge=1, le=100_000)
    relayer_poll_interval: float = Field(
        default=1.0, alias="SETTLEMENT_RELAYER_POLL_INTERVAL", gt=0
    )
    rpc_timeout: float = Field(default=10.0, alias="SETTLEMENT_RPC_TIMEOUT", gt=0)

    @field_validator("factory_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
            raise ValueError("must be 0x followed by 40 hex digits")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _complete(self) -> RelayerSettings:
        if self.eth_rpc_url is not None and (self.chain_id is None or not self.factory_address):
            raise ValueError(
                "ETH_RPC_URL is set: SETTLEMENT_CHAIN_ID and SETTLEMENT_FACTORY_ADDRESS are "
                "required too"
            )
        return self

    @property
    def relayer_enabled(self) -> bool:
        return self.eth_rpc_url is not None


class SettlementSettings(RelayerSettings):
    # Key material for encrypting webhook signing secrets at rest (any string of >= 32
    # characters; a Fernet key is derived from it with HKDF). Required, no default.
    webhook_key: SecretStr = Field(alias="SETTLEMENT_WEBHOOK_KEY", min_length=32)
    # Comma-separated keys that were SETTLEMENT_WEBHOOK_KEY before a rotation: still
    # accepted for decrypting until `fusion-prime settlement reencrypt-webhook-secrets` ran.
    webhook_previous_keys: SecretStr = Field(
        default=SecretStr(""), alias="SETTLEMENT_WEBHOOK_PREVIOUS_KEYS"
    )
    webhook_retry_schedule: str = Field(
        default=DEFAULT_RETRY_SCHEDULE, alias="SETTLEMENT_WEBHOOK_RETRY_SCHEDULE"
    )
    # An endpoint that keeps failing this long (seconds since its first unanswered
    # failure) is disabled; default three days.
    webhook_disable_after: float = Field(
        default=259_200.0, alias="SETTLEMENT_WEBHOOK_DISABLE_AFTER", gt=0
    )
    webhook_timeout: float = Field(default=10.0, alias="SETTLEMENT_WEBHOOK_TIMEOUT", gt=0)
    webhook_poll_interval: float = Field(
        default=1.0, alias="SETTLEMENT_WEBHOOK_POLL_INTERVAL", gt=0
    )
    webhook_batch: int = Field(default=50, alias="SETTLEMENT_WEBHOOK_BATCH", ge=1, le=1000)
    command_poll_interval: float = Field(
        default=1.0, alias="SETTLEMENT_COMMAND_POLL_INTERVAL", gt=0
    )
    # A submitted command with no matching chain event after this many seconds is failed
    # (the signer never got it on chain); default one day.
    command_timeout: float = Field(default=86_400.0, alias="SETTLEMENT_COMMAND_TIMEOUT", gt=0)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def retry_schedule(self) -> tuple[float, ...]:
        return parse_schedule(self.webhook_retry_schedule)
