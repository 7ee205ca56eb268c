"""Compliance settings. The webhook secret has no default: without it the service refuses
to start, because an unauthenticated identity webhook could verify anyone."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from fusion_prime.platform.settings import BaseServiceSettings


class SanctionsSettings(BaseServiceSettings):
    """What the list-loading CLI needs too (it re-screens users after a load)."""

    sanctions_name_threshold: float = Field(
        default=0.85, alias="SANCTIONS_NAME_THRESHOLD", ge=0.5, le=1.0
    )


class ComplianceSettings(SanctionsSettings):
    kyc_webhook_secret: SecretStr = Field(alias="KYC_WEBHOOK_SECRET")
    kyc_webhook_tolerance_seconds: int = Field(
        default=300, alias="KYC_WEBHOOK_TOLERANCE_SECONDS", ge=1, le=3600
    )

    @field_validator("kyc_webhook_secret")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) < 16:
            raise ValueError("KYC_WEBHOOK_SECRET must be at least 16 characters")
        return value
