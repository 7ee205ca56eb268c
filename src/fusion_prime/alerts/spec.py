"""The alert notification service as the platform sees it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter

from fusion_prime.alerts.settings import AlertsSettings
from fusion_prime.platform.runtime import BackgroundTask, Runtime
from fusion_prime.platform.spec import ServiceSpec

WORKER = "alerts_worker"


def _background(runtime: Runtime) -> Sequence[BackgroundTask]:
    from fusion_prime.alerts.delivery import DeliveryWorker
    from fusion_prime.alerts.handlers import configure

    settings = runtime.settings
    assert isinstance(settings, AlertsSettings)
    configure(settings)
    worker = DeliveryWorker(runtime.sessions, settings, runtime.url)
    runtime.state[WORKER] = worker
    return [worker.run]


def _routers() -> Sequence[APIRouter]:
    from fusion_prime.alerts.api import router

    return [router]


SPEC = ServiceSpec(
    name="alerts",
    db_slug="alert",
    default_port=8105,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=_routers,
    settings_cls=AlertsSettings,
    background=_background,
    description="margin alerts to people over email, webhook, Slack and SMS",
    required_secrets=("ALERTS_SECRET_KEY",),
    optional_secrets=("ALERTS_SMTP_PASSWORD", "ALERTS_SMS_AUTH_TOKEN"),
)
