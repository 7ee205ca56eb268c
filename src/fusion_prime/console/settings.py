"""Settings of the console process. It has no database: DATABASE_URL is refused, not read."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fusion_prime.platform.settings import Environment

SERVICES = ("settlement", "compliance", "risk", "alerts", "oracle")


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    fp_env: Environment = Field(default="development", alias="FP_ENV")
    log_level: str = Field(default="INFO", alias="FP_LOG_LEVEL")
    # the console's own key for reading the services (viewer is enough); a signed-in
    # user's key is used for actions (replay), so the service checks that user's role too
    api_key: SecretStr | None = Field(default=None, alias="CONSOLE_API_KEY")
    # key material for the CSRF tokens; `fusion-prime up` generates one per data dir
    session_key: SecretStr = Field(alias="CONSOLE_SESSION_KEY", min_length=32)
    settlement_url: str = Field(default="http://127.0.0.1:8101", alias="CONSOLE_SETTLEMENT_URL")
    compliance_url: str = Field(default="http://127.0.0.1:8102", alias="CONSOLE_COMPLIANCE_URL")
    risk_url: str = Field(default="http://127.0.0.1:8103", alias="CONSOLE_RISK_URL")
    alerts_url: str = Field(default="http://127.0.0.1:8105", alias="CONSOLE_ALERTS_URL")
    oracle_url: str = Field(default="http://127.0.0.1:8104", alias="CONSOLE_ORACLE_URL")
    # the local development mail server's inbox (`fusion-prime up`); unset: no inbox page
    mail_url: str | None = Field(default=None, alias="CONSOLE_MAIL_URL")
    # which service answers GET /auth/whoami at sign-in (every service does)
    auth_service: str = Field(default="settlement", alias="CONSOLE_AUTH_SERVICE")
    # Secure cookies need https; plain-http local development may turn it off (never in
    # production)
    cookie_secure: bool = Field(default=True, alias="CONSOLE_COOKIE_SECURE")
    request_timeout: float = Field(default=5.0, alias="CONSOLE_TIMEOUT", gt=0, le=60)
    refresh_seconds: int = Field(default=10, alias="CONSOLE_REFRESH_SECONDS", ge=0, le=3600)
    # whole-table figures (risk /stats, the day's notifications) are re-read in the
    # background this often; pages show them with their time (0: every request)
    aggregate_ttl: float = Field(default=15.0, alias="CONSOLE_AGGREGATE_TTL", ge=0, le=3600)
    # Cloud Run: send a Google ID token for each service (audience: its URL) in
    # X-Serverless-Authorization (console/idtokens.py); deploy_gen.CONSOLE sets it
    serverless_auth: bool = Field(default=False, alias="CONSOLE_SERVERLESS_AUTH")
    whoami_cache_seconds: float = Field(default=30.0, alias="CONSOLE_WHOAMI_CACHE", ge=0, le=600)

    @model_validator(mode="after")
    def _checks(self) -> ConsoleSettings:
        if self.fp_env == "production" and not self.cookie_secure:
            raise ValueError("CONSOLE_COOKIE_SECURE=false is refused when FP_ENV=production")
        if self.auth_service not in SERVICES:
            raise ValueError(f"CONSOLE_AUTH_SERVICE must be one of {', '.join(SERVICES)}")
        return self

    def base_urls(self) -> dict[str, str]:
        return {
            "settlement": self.settlement_url,
            "compliance": self.compliance_url,
            "risk": self.risk_url,
            "alerts": self.alerts_url,
            "oracle": self.oracle_url,
        }
