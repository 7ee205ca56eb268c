"""The compliance service as the platform sees it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from fusion_prime.compliance.settings import ComplianceSettings
from fusion_prime.platform.spec import ServiceSpec


def _routers() -> list[APIRouter]:
    from fusion_prime.compliance.api import router

    return [router]


SPEC = ServiceSpec(
    name="compliance",
    db_slug="compliance",
    default_port=8102,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=_routers,
    settings_cls=ComplianceSettings,
    description="KYC cases, AML monitoring, sanctions screening, hash-chained audit trail",
    publishes=("compliance.decisions.v1",),
    required_secrets=("KYC_WEBHOOK_SECRET",),
)
