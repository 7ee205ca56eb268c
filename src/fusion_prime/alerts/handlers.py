"""The consumer of `alerts.margin.v1` (subscription `alert-notification-service`).

Runs inside the platform consumer's transaction, after the inbox claim: the events, the
notifications they cause and the inbox rows commit together, so a redelivered event id
creates nothing new, and a crash before the commit leaves the message to be redelivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.alerts.service import ingest
from fusion_prime.alerts.settings import IngestSettings
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler

_configured: list[IngestSettings] = []


def configure(settings: IngestSettings) -> None:
    """The running service passes its settings (the handler is resolved by name)."""
    _configured[:] = [settings]


@cache
def _from_env() -> IngestSettings:
    return IngestSettings()


def current_settings() -> IngestSettings:
    return _configured[0] if _configured else _from_env()


@batch_handler
async def handle_margin_events(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
    s = current_settings()
    await ingest(session, envelopes, dedupe_window=s.dedupe_window, retry_for=s.retry_for)
