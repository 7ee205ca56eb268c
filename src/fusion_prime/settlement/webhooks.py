"""Webhook endpoints, their signing secrets, and the delivery worker.

The signing secret is shown once, at registration. It is stored encrypted (Fernet, key
derived from SETTLEMENT_WEBHOOK_KEY) because the worker needs it back to sign; a hash
would not do. Deliveries are created in the transaction of the escrow state change
(see service.ingest); this worker only sends them, with retries, recording every attempt.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.fernet import MultiFernet
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform import outbound, secretbox
from fusion_prime.platform.database import DatabaseClock
from fusion_prime.platform.errors import NotFoundError
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.targets import TargetPolicy, guarded_client
from fusion_prime.settlement.settings import SettlementSettings

log = get_logger(__name__)

EVENT_ID_HEADER = "Fusion-Prime-Event-Id"
DELIVERY_ID_HEADER = "Fusion-Prime-Delivery-Id"
# How long a claimed delivery is reserved for the worker that claimed it; if that worker
# dies mid-request, another picks the delivery up after this lease.
LEASE_SECONDS = 60.0

ATTEMPTS = Counter(
    "fp_settlement_webhook_attempts_total", "Webhook delivery attempts", ["service", "outcome"]
)
DISABLED = Counter(
    "fp_settlement_webhook_endpoints_disabled_total",
    "Webhook endpoints disabled after failing too long",
    ["service"],
)


_SECRETS_INFO = b"fusion-prime/settlement/webhook-secrets/v1"


def cipher(key: str, previous: Sequence[str] = ()) -> MultiFernet:
    """Encrypts with `key`; decrypts with it or any previous key (for key rotation)."""
    return secretbox.cipher(key, previous, info=_SECRETS_INFO)


def settings_cipher(settings: SettlementSettings) -> MultiFernet:
    return cipher(
        settings.webhook_key.get_secret_value(),
        secretbox.split_keys(settings.webhook_previous_keys.get_secret_value()),
    )


async def reencrypt_secrets(session: AsyncSession, fernet: MultiFernet) -> int:
    """Re-encrypt every stored secret under the current key (after a key rotation)."""
    rows = (
        await session.execute(
            text("SELECT id, secret_ciphertext FROM webhook_endpoints FOR UPDATE")
        )
    ).all()
    for row in rows:
        await session.execute(
            text("UPDATE webhook_endpoints SET secret_ciphertext = :c WHERE id = :id"),
            {"c": fernet.rotate(bytes(row.secret_ciphertext)), "id": row.id},
        )
    return len(rows)


_ENDPOINT_COLUMNS = (
    "id, url, event_types, enabled, failing_since, disabled_at, disabled_reason, created_at"
)


async def create_endpoint(
    session: AsyncSession, fernet: MultiFernet, url: str, event_types: Sequence[str]
) -> tuple[dict[str, Any], str]:
    """Register an endpoint; returns it and the plain secret (the only time it is seen)."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = (
        (
            await session.execute(
                text(
                    "INSERT INTO webhook_endpoints (id, url, event_types, secret_ciphertext) "
                    "VALUES (:id, :url, CAST(:types AS text[]), :secret) "
                    f"RETURNING {_ENDPOINT_COLUMNS}"
                ),
                {
                    "id": uuid.uuid4(),
                    "url": url,
                    "types": list(event_types),
                    "secret": fernet.encrypt(secret.encode()),
                },
            )
        )
        .mappings()
        .one()
    )
    return dict(row), secret


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> dict[str, Any]:
    row = (
        (
            await session.execute(
                text(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = :id"),
                {"id": endpoint_id},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"webhook {endpoint_id} does not exist")
    return dict(row)


async def enable_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> dict[str, Any]:
    """Re-enable an endpoint (after its owner fixed it); failures start counting afresh.
    Deliveries failed while it was disabled are not resent."""
    row = (
        (
            await session.execute(
                text(
                    "UPDATE webhook_endpoints SET enabled = true, failing_since = NULL, "
                    "disabled_at = NULL, disabled_reason = NULL WHERE id = :id "
                    f"RETURNING {_ENDPOINT_COLUMNS}"
                ),
                {"id": endpoint_id},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"webhook {endpoint_id} does not exist")
    return dict(row)


async def list_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, limit: int
) -> list[dict[str, Any]]:
    await get_endpoint(session, endpoint_id)
    rows = await session.execute(
        text(
            "SELECT d.id, d.event_id, d.event_type, d.escrow_address, d.status, d.attempts, "
            "d.next_attempt_at, d.last_error, d.created_at, d.last_attempt_at, d.delivered_at, "
            "coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, "
            "'attempted_at', a.attempted_at, 'status_code', a.status_code, 'error', a.error, "
            "'duration_ms', a.duration_ms, 'succeeded', a.succeeded) ORDER BY a.attempt) "
            "FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log "
            "FROM webhook_deliveries d WHERE d.endpoint_id = :id "
            "ORDER BY d.created_at DESC, d.id LIMIT :n"
        ),
        {"id": endpoint_id, "n": limit},
    )
    return [dict(r) for r in rows.mappings()]


@dataclass(frozen=True)
class _Claimed:
    id: uuid.UUID
    endpoint_id: uuid.UUID
    url: str
    secret_ciphertext: bytes
    event_id: uuid.UUID
    body: str
    attempts: int


@dataclass(frozen=True)
class _Outcome:
    delivery: _Claimed
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker:
    """Claims due deliveries (lease, SKIP LOCKED), POSTs them, records each attempt."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: SettlementSettings
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.schedule = settings.retry_schedule
        self.fernet = settings_cipher(settings)
        self._client: httpx.AsyncClient | None = None  # opened by run()
        # signatures' timestamps: the database's clock, read at each claim
        self.clock = DatabaseClock()

    async def run(self) -> None:
        # subscribers' URLs: every connection checked again (DNS rebinding), no redirects
        async with guarded_client(
            TargetPolicy.from_settings(self.settings),
            timeout=self.settings.webhook_timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        ) as client:
            self._client = client
            while True:
                sent = await self.run_once()
                if sent < self.settings.webhook_batch:
                    await asyncio.sleep(self.settings.webhook_poll_interval)

    async def run_once(self) -> int:
        claimed = await self._claim()
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._send(d) for d in claimed))
        await self._record(outcomes)
        return len(claimed)

    async def _claim(self) -> list[_Claimed]:
        async with self.sessions() as session, session.begin():
            rows = await session.execute(
                text(
                    "WITH due AS (SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints w "
                    "ON w.id = d.endpoint_id WHERE d.status = 'pending' AND w.enabled "
                    "AND d.next_attempt_at <= now() ORDER BY d.next_attempt_at LIMIT :n "
                    "FOR UPDATE OF d SKIP LOCKED) "
                    "UPDATE webhook_deliveries d SET next_attempt_at = now() "
                    "+ make_interval(secs => :lease) FROM due, webhook_endpoints w "
                    "WHERE d.id = due.id AND w.id = d.endpoint_id "
                    "RETURNING d.id, d.endpoint_id, w.url, w.secret_ciphertext, d.event_id, "
                    "d.body, d.attempts"
                ),
                {"n": self.settings.webhook_batch, "lease": LEASE_SECONDS},
            )
            claimed = [_Claimed(**dict(r)) for r in rows.mappings()]
            if claimed:
                # signatures are timestamped by the database's clock (carried on with the
                # monotonic one): a settlement process whose own clock is minutes off still
                # signs the true time, and receivers (300 s tolerance) accept it
                await self.clock.sync(session)
            return claimed

    async def _send(self, delivery: _Claimed) -> _Outcome:
        assert self._client is not None
        body = delivery.body.encode()
        try:
            secret = self.fernet.decrypt(delivery.secret_ciphertext).decode()
        except Exception as exc:  # a secret we cannot read is a failed attempt, recorded
            return _Outcome(delivery, None, f"{type(exc).__name__}: {exc}"[:500], 0)
        out = await outbound.post(
            self._client,
            delivery.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                **outbound.signed_headers(secret, body, now=self.clock.now()),
                EVENT_ID_HEADER: str(delivery.event_id),
                DELIVERY_ID_HEADER: str(delivery.id),
            },
            timeout=self.settings.webhook_timeout,
        )
        return _Outcome(delivery, out.status_code, out.error, out.duration_ms)

    async def _record(self, outcomes: Sequence[_Outcome]) -> None:
        async with self.sessions() as session, session.begin():
            for o in outcomes:
                attempt = o.delivery.attempts + 1
                await session.execute(
                    text(
                        "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, "
                        "duration_ms, succeeded) VALUES (:d, :a, :s, :e, :ms, :ok)"
                    ),
                    {
                        "d": o.delivery.id,
                        "a": attempt,
                        "s": o.status_code,
                        "e": o.error,
                        "ms": o.duration_ms,
                        "ok": o.ok,
                    },
                )
                ATTEMPTS.labels("settlement", "succeeded" if o.ok else "failed").inc()
                if o.ok:
                    await session.execute(
                        text(
                            "UPDATE webhook_deliveries SET status = 'succeeded', attempts = :a, "
                            "last_attempt_at = now(), delivered_at = now(), "
                            "next_attempt_at = NULL, last_error = NULL WHERE id = :d"
                        ),
                        {"a": attempt, "d": o.delivery.id},
                    )
                    await session.execute(
                        text("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id"),
                        {"id": o.delivery.endpoint_id},
                    )
                    continue
                retry_index = attempt - 1
                exhausted = retry_index >= len(self.schedule)
                await session.execute(
                    text(
                        "UPDATE webhook_deliveries SET attempts = :a, last_attempt_at = now(), "
                        "last_error = :e, status = CASE WHEN :exhausted THEN 'failed' "
                        "ELSE 'pending' END, next_attempt_at = CASE WHEN :exhausted THEN NULL "
                        "ELSE now() + make_interval(secs => :delay) END WHERE id = :d"
                    ),
                    {
                        "a": attempt,
                        "e": o.error,
                        "exhausted": exhausted,
                        "delay": 0.0 if exhausted else self.schedule[retry_index],
                        "d": o.delivery.id,
                    },
                )
                await self._mark_failing(session, o.delivery.endpoint_id)

    async def _mark_failing(self, session: AsyncSession, endpoint_id: uuid.UUID) -> None:
        """Remember when the endpoint started failing; disable it once that is too long ago."""
        row = (
            await session.execute(
                text(
                    "WITH cur AS (SELECT id, enabled AS was_enabled, "
                    "coalesce(failing_since, now()) AS since FROM webhook_endpoints "
                    "WHERE id = :id FOR UPDATE), "
                    "verdict AS (SELECT id, was_enabled, since, "
                    "now() - since >= make_interval(secs => :after) AS too_long FROM cur) "
                    "UPDATE webhook_endpoints w SET failing_since = v.since, "
                    "enabled = w.enabled AND NOT v.too_long, "
                    "disabled_at = CASE WHEN w.enabled AND v.too_long THEN now() "
                    "ELSE w.disabled_at END, "
                    "disabled_reason = CASE WHEN w.enabled AND v.too_long "
                    "THEN 'failing since ' || v.since ELSE w.disabled_reason END "
                    "FROM verdict v WHERE w.id = v.id RETURNING v.was_enabled, w.enabled"
                ),
                {"after": self.settings.webhook_disable_after, "id": endpoint_id},
            )
        ).one()
        if row.was_enabled and not row.enabled:
            # its pending deliveries will not be attempted any more: say so on each
            await session.execute(
                text(
                    "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, "
                    "last_error = 'endpoint disabled after failing too long' "
                    "WHERE endpoint_id = :id AND status = 'pending'"
                ),
                {"id": endpoint_id},
            )
            DISABLED.labels("settlement").inc()
            log.warning("webhook endpoint disabled", endpoint_id=str(endpoint_id))
