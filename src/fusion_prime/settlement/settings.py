"""Settlement settings. The webhook key is a secret: no default, the process refuses to start
without it, exactly like DATABASE_URL (a signing secret stored in clear would be the next
incident report)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

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


class SettlementSettings(BaseServiceSettings):
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
