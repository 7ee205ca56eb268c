"""The delivery worker: claims due notifications (SKIP LOCKED, with a lease), sends each
through its channel, and records the attempt and the honest outcome right after the
provider answered, one short transaction per delivery.

Nothing is marked sent before the provider accepted. A worker killed between the
provider's answer and the commit leaves the notification to be claimed again after the
lease: that one may be sent twice, with the same idempotency key (notification id as
Message-ID / Fusion-Prime-Delivery-Id / Idempotency-Key) so the receiver can drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter as Counter_
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import MultiFernet
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.alerts import repository as repo
from fusion_prime.alerts import service
from fusion_prime.alerts.channels import Delivery, Result, Sender
from fusion_prime.alerts.channels.email import EmailSender
from fusion_prime.alerts.channels.slack import SlackSender
from fusion_prime.alerts.channels.sms import SmsSender
from fusion_prime.alerts.channels.webhook import WebhookSender
from fusion_prime.alerts.domain import FAILOVER_TIERS, Channel, Kind, retry_delay
from fusion_prime.alerts.messages import render
from fusion_prime.alerts.settings import AlertsSettings
from fusion_prime.platform import outbound, secretbox
from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.postgres import Listener
from fusion_prime.platform.database import DatabaseClock
from fusion_prime.platform.errors import InvalidError
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.targets import TargetPolicy

log = get_logger(__name__)

DELIVERIES = Counter(
    "fp_alerts_deliveries_total", "Delivery attempts by channel and outcome", ["channel", "status"]
)
QUEUE_DEPTH = Gauge("fp_alerts_queue_depth", "Notifications waiting to be sent (pending)")
OLDEST_PENDING = Gauge("fp_alerts_oldest_pending_seconds", "Age of the oldest pending notification")
LATENCY = Histogram(
    "fp_alerts_delivery_seconds",
    "Provider call latency",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_SECRETS_INFO = b"fusion-prime/alerts/contact-secrets/v1"
STATS_INTERVAL = 1.0


def contact_cipher(settings: AlertsSettings) -> MultiFernet:
    return secretbox.cipher(
        settings.secret_key.get_secret_value(),
        secretbox.split_keys(settings.previous_secret_keys.get_secret_value()),
        info=_SECRETS_INFO,
    )


@dataclass(frozen=True)
class Sent:
    claimed: repo.Claimed
    result: Result
    attempted_at: datetime


class Deliverer:
    """Sends claimed notifications and records what happened."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: AlertsSettings,
        clients: outbound.ClientPool,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.fernet = contact_cipher(settings)
        # webhook signatures are stamped by the database's clock (synced at each claim):
        # an alerts process whose own clock is minutes off still signs the true time
        self.clock = DatabaseClock()
        self.senders: dict[Channel, Sender] = {
            Channel.EMAIL: EmailSender(settings),
            Channel.WEBHOOK: WebhookSender(clients, settings.http_timeout, self.clock.now),
            Channel.SLACK: SlackSender(clients, settings.http_timeout),
            Channel.SMS: SmsSender(clients, settings),
        }

    def _delivery(self, c: repo.Claimed) -> Delivery:
        secret = self.fernet.decrypt(c.secret_ciphertext).decode() if c.secret_ciphertext else None
        link = self.settings.account_url.replace("{account_id}", c.account_id)
        data = dict(c.payload)
        message = render(
            c.kind,
            account_id=c.account_id,
            tier=c.tier,
            data=data,
            link=link,
            count=c.fold_count,
            test=c.test,
            html=c.channel == Channel.EMAIL,
        )
        payload: dict[str, Any] = {
            "account_id": c.account_id,
            "kind": c.kind,
            "tier": c.tier,
            "count": c.fold_count,
            "event_id": str(c.event_id) if c.event_id else None,
            "link": link,
            "test": c.test,
            "data": data,
        }
        return Delivery(
            c.id, c.event_id, Channel(c.channel), c.address or "", secret, message, payload,
            c.attempts + 1,
        )  # fmt: skip

    async def send(self, c: repo.Claimed) -> Sent:
        """One provider call; never raises (every failure is a result to record)."""
        attempted_at = datetime.now(UTC)
        if c.contact_deleted or c.address is None:
            return Sent(c, Result("failed", 0, error="contact deleted or channel removed"),
                        attempted_at)  # fmt: skip
        try:
            d = self._delivery(c)
        except Exception as exc:  # unreadable secret, template error: recorded
            error = f"cannot build message: {type(exc).__name__}"
            return Sent(c, Result("failed", 0, error=error), attempted_at)
        started = time.perf_counter()
        try:
            result = await self.senders[d.channel](d)
        except Exception as exc:  # a sender bug must not lose the attempt
            result = Result("retry", 0, error=f"{type(exc).__name__}: {exc}"[:500])
        LATENCY.labels(c.channel).observe(time.perf_counter() - started)
        return Sent(c, result, attempted_at)

    async def deliver(self, c: repo.Claimed) -> Result:
        sent = await self.send(c)
        await self.record([sent])
        return sent.result

    async def record(self, batch: Sequence[Sent]) -> None:
        """Attempts and outcomes of sends that have all been answered, in one transaction
        with set-based statements (failures that end a delivery are handled one by one:
        they may fall over to another channel)."""
        if not batch:
            return
        now = datetime.now(UTC).timestamp()
        attempts: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []
        retry: list[dict[str, Any]] = []
        failed: list[tuple[repo.Claimed, str]] = []
        counts: Counter_[tuple[str, str]] = Counter_()
        for x in batch:
            c, r = x.claimed, x.result
            attempts.append(
                {
                    "n": str(c.id), "a": c.attempts + 1, "ch": c.channel,
                    "at": x.attempted_at.isoformat(), "ms": r.latency_ms, "code": r.code,
                    "resp": r.response, "err": r.error, "o": r.outcome,
                }
            )  # fmt: skip
            if r.outcome == "accepted":
                latest = str(c.latest_event_id) if c.latest_event_id else None
                sent.append({"id": str(c.id), "ref": r.provider_ref, "latest": latest})
                counts[(c.channel, "sent")] += 1
                continue
            error = r.error or "failed"
            if r.outcome == "retry":
                delay = retry_delay(
                    c.attempts + 1, self.settings.retry_base, self.settings.retry_max_delay
                )
                delay = max(delay, r.retry_after or 0.0)
                if now + delay <= c.retry_until.timestamp():
                    retry.append({"id": str(c.id), "e": error, "d": delay})
                    counts[(c.channel, "retry")] += 1
                    continue
                error = f"retries exhausted after {c.attempts + 1} attempts: {error}"
            failed.append((c, error))
            counts[(c.channel, "failed")] += 1
        # provider references of accepted messages, by channel: a delivery report for one
        # of them may already be parked (it arrived before this commit)
        refs: dict[str, list[str]] = {}
        for x in batch:
            if x.result.outcome == "accepted" and x.result.provider_ref:
                refs.setdefault(x.claimed.channel, []).append(x.result.provider_ref)
        async with self.sessions() as session, session.begin():
            for channel, channel_refs in sorted(refs.items()):
                await repo.lock_provider_refs(session, channel, channel_refs)
            await repo.record_attempts(session, attempts)
            await repo.mark_sent_many(session, sent)
            await repo.mark_retry_many(session, retry)
            for c, error in failed:
                await repo.mark_failed(session, c, error, attempted=True)
                await failover(session, c, self.settings.retry_for)
            if refs:
                with_ref = [x.claimed.id for x in batch if x.result.provider_ref]
                for reported in await repo.apply_parked_reports(session, with_ref):
                    if reported.status == "failed":
                        await failover(session, reported, self.settings.retry_for)
        for (channel, status), n in counts.items():  # counted once committed
            DELIVERIES.labels(channel, status).inc(n)


async def send_test(
    sessions: async_sessionmaker[AsyncSession],
    settings: AlertsSettings,
    contact_id: uuid.UUID,
    channel: Channel | None,
    kind: Kind,
) -> uuid.UUID:
    """A `[TEST]` message of `kind` to a contact, sent now (channel: the contact's first
    by default) and recorded like any delivery; the notification id."""
    async with sessions() as session, session.begin():
        contact = repo.to_contact(await service.get_contact(session, contact_id))
        channel = channel or contact.endpoints[0].channel
        if contact.endpoint(channel) is None:
            raise InvalidError(
                f"channel {channel.value} is not one of this contact's channels", field="channel"
            )
        nid = await service.create_test_notification(
            session, contact, channel, kind, settings.retry_for
        )
    policy = TargetPolicy.from_settings(settings)
    async with outbound.ClientPool(1, settings.http_timeout, policy=policy) as clients:
        deliverer = Deliverer(sessions, settings, clients)
        async with sessions() as session, session.begin():
            claimed = await repo.claim_one(session, nid, settings.lease_seconds)
            await deliverer.clock.sync(session)
        assert claimed is not None
        await deliverer.deliver(claimed)
    return nid


async def failover(
    session: AsyncSession, c: repo.Claimed | repo.Reported, retry_for: float
) -> uuid.UUID | None:
    """A margin call or liquidation that cannot reach a recipient on one channel (retries
    exhausted, refused, or reported undelivered by the provider) is sent on their next
    channel (in the contact's own order) not yet tried for that event."""
    if c.tier not in FAILOVER_TIERS or c.test or c.contact_deleted:
        return None
    contact_rows = await repo.contact_rows(session, contact_id=c.contact_id)
    if not contact_rows:
        return None
    contact = repo.to_contact(contact_rows[0])
    root = await repo.failover_root(session, c.id)
    used = await repo.used_channels(session, c.event_id, c.contact_id, root)
    nxt = next((e for e in contact.endpoints if e.channel.value not in used), None)
    if nxt is None:
        return None
    nid = await repo.insert_failover(session, c, nxt.channel.value, retry_for)
    await repo.wake_workers(session)
    log.info("failover", notification=str(c.id), to=str(nid), channel=nxt.channel.value)
    return nid


class DeliveryWorker:
    """The background loop: claim a batch, send with bounded concurrency, repeat."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: AlertsSettings,
        url: URL | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.deliverer: Deliverer | None = None
        self._stats_at = 0.0
        self._wake = asyncio.Event()
        # LISTEN for new pending notifications (commit-to-send latency without busy
        # polling); without a URL, or if LISTEN fails, the loop polls only
        self._listener = (
            Listener(asyncpg_dsn(url), repo.PENDING_CHANNEL, lambda _: self._wake.set())
            if url is not None
            else None
        )

    async def run(self) -> None:
        pool = outbound.ClientPool(
            self.settings.delivery_concurrency,
            self.settings.http_timeout,
            policy=TargetPolicy.from_settings(self.settings),
        )
        async with pool:
            self.deliverer = Deliverer(self.sessions, self.settings, pool)
            try:
                while True:
                    if self._listener is not None:
                        await self._listener.ensure()
                    self._wake.clear()
                    n = await self.run_once()
                    await self._stats()
                    if n < self.settings.delivery_batch:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._wake.wait(), timeout=self.settings.poll_interval
                            )
            finally:
                self.deliverer = None
                if self._listener is not None:
                    await self._listener.close()

    async def run_once(self) -> int:
        assert self.deliverer is not None
        deliverer = self.deliverer
        async with self.sessions() as session, session.begin():
            claimed = await repo.claim_due(
                session, self.settings.delivery_batch, self.settings.lease_seconds
            )
            if claimed:
                await deliverer.clock.sync(session)
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.settings.delivery_concurrency)

        async def one(c: repo.Claimed) -> Sent:
            async with gate:
                return await deliverer.send(c)

        # recorded together once all of the batch answered: one transaction per batch.
        # A crash before that commit resends the batch after the lease (same keys).
        await deliverer.record(await asyncio.gather(*(one(c) for c in claimed)))
        return len(claimed)

    async def _stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_INTERVAL:
            return
        self._stats_at = now
        async with self.sessions() as session:
            depth, oldest = await repo.queue_stats(session)
        QUEUE_DEPTH.set(depth)
        OLDEST_PENDING.set(oldest)
