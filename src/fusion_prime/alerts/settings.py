"""Alerts settings. Provider credentials are secrets without defaults; a channel whose
provider is not configured refuses its deliveries with a recorded reason (never "sent")."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from fusion_prime.platform.settings import BaseServiceSettings


class IngestSettings(BaseServiceSettings):
    """What the event consumer needs (it runs without the provider credentials)."""

    dedupe_window: float = Field(default=900.0, alias="ALERTS_DEDUPE_WINDOW", ge=0)
    retry_for: float = Field(default=86_400.0, alias="ALERTS_RETRY_FOR", gt=0)


class AlertsSettings(IngestSettings):
    # key material (>= 32 chars) encrypting contact secrets at rest: webhook signing
    # secrets and Slack incoming-webhook URLs. Required, no default.
    secret_key: SecretStr = Field(alias="ALERTS_SECRET_KEY", min_length=32)
    previous_secret_keys: SecretStr = Field(
        default=SecretStr(""), alias="ALERTS_PREVIOUS_SECRET_KEYS"
    )

    # email over SMTP; without a host the email channel is "not configured"
    smtp_host: str | None = Field(default=None, alias="ALERTS_SMTP_HOST")
    smtp_port: int = Field(default=587, alias="ALERTS_SMTP_PORT", ge=1, le=65535)
    smtp_username: str | None = Field(default=None, alias="ALERTS_SMTP_USERNAME")
    smtp_password: SecretStr | None = Field(default=None, alias="ALERTS_SMTP_PASSWORD")
    smtp_from: str = Field(default="alerts@fusion-prime.invalid", alias="ALERTS_SMTP_FROM")
    # STARTTLS is required in production; a local test server may run without it
    smtp_starttls: bool = Field(default=True, alias="ALERTS_SMTP_STARTTLS")
    # a CA bundle to trust for the SMTP server's certificate (a private relay); default:
    # the system's trust store
    smtp_ca_file: str | None = Field(default=None, alias="ALERTS_SMTP_CA_FILE")
    smtp_timeout: float = Field(default=15.0, alias="ALERTS_SMTP_TIMEOUT", gt=0)

    # SMS through an HTTP API shaped like Twilio's Messages API
    sms_api_url: str | None = Field(default=None, alias="ALERTS_SMS_API_URL")
    sms_account_sid: str | None = Field(default=None, alias="ALERTS_SMS_ACCOUNT_SID")
    sms_auth_token: SecretStr | None = Field(default=None, alias="ALERTS_SMS_AUTH_TOKEN")
    sms_from: str | None = Field(default=None, alias="ALERTS_SMS_FROM")
    # the public URL of POST /providers/sms/status: when set, each message asks the
    # provider for delivery reports there (the only way an SMS becomes "delivered")
    sms_status_callback_url: str | None = Field(
        default=None, alias="ALERTS_SMS_STATUS_CALLBACK_URL"
    )

    http_timeout: float = Field(default=10.0, alias="ALERTS_HTTP_TIMEOUT", gt=0)

    # retries: exponential back-off with jitter from `retry_base`, capped at
    # `retry_max_delay`, for ALERTS_RETRY_FOR seconds after the notification was created
    retry_base: float = Field(default=5.0, alias="ALERTS_RETRY_BASE", ge=0)
    retry_max_delay: float = Field(default=3600.0, alias="ALERTS_RETRY_MAX_DELAY", ge=0)

    delivery_concurrency: int = Field(
        default=50, alias="ALERTS_DELIVERY_CONCURRENCY", ge=1, le=1000
    )
    delivery_batch: int = Field(default=100, alias="ALERTS_DELIVERY_BATCH", ge=1, le=5000)
    poll_interval: float = Field(default=1.0, alias="ALERTS_POLL_INTERVAL", gt=0)
    # how long a claimed delivery is reserved for the worker that claimed it; a worker
    # killed mid-send leaves it to be claimed again after this
    lease_seconds: float = Field(default=60.0, alias="ALERTS_LEASE_SECONDS", gt=0)
    # the account's page linked from every message; {account_id} is substituted
    account_url: str = Field(
        default="http://127.0.0.1:8103/accounts/{account_id}/health",
        alias="ALERTS_ACCOUNT_URL",
    )

    @model_validator(mode="after")
    def _production_rules(self) -> AlertsSettings:
        if self.production and self.smtp_host and not self.smtp_starttls:
            raise ValueError("ALERTS_SMTP_STARTTLS=false is refused in production")
        if "{account_id}" not in self.account_url:
            raise ValueError("ALERTS_ACCOUNT_URL must contain {account_id}")
        # a claimed batch is sent in waves of `delivery_concurrency`; its lease must outlast
        # the slowest possible batch, or another worker could claim a delivery in flight
        waves = -(-self.delivery_batch // self.delivery_concurrency)
        slowest = waves * max(self.http_timeout, self.smtp_timeout)
        if self.lease_seconds <= slowest:
            raise ValueError(
                f"ALERTS_LEASE_SECONDS ({self.lease_seconds:g}) must exceed {slowest:g} s: "
                "ceil(ALERTS_DELIVERY_BATCH / ALERTS_DELIVERY_CONCURRENCY) x the longer of "
                "ALERTS_HTTP_TIMEOUT and ALERTS_SMTP_TIMEOUT"
            )
        return self
