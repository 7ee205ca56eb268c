"""The consumer loop: lease from the postgres broker, apply in one service transaction, ack.

The order of operations is the whole point (the old system acked before handling):
1. lease a batch (visibility timeout: if this process dies, the lease expires and the
   messages are delivered again);
2. run `consume_batch` in ONE transaction on the service database: effects and inbox
   claims commit together or not at all;
3. only then ack in the bus database. A crash between 2 and 3 redelivers; the inbox
   turns the redelivery into a no-op.
On a handler error the batch is rolled back and retried one message per transaction,
so one poison message cannot hold back the rest; the failed message gets a back-off and,
after `max_attempts` deliveries, goes to the dead-letter table.
"""

from __future__ import annotations

import asyncio
import importlib
import traceback
import uuid
from dataclasses import dataclass

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import (
    BatchHandler,
    Handler,
    consume_batch,
    is_batch_handler,
)
from fusion_prime.platform.bus.postgres import (
    NOTIFY_CHANNEL,
    LeasedMessage,
    Listener,
    PostgresBroker,
)
from fusion_prime.platform.bus.registry import Subscription, Topic
from fusion_prime.platform.database import (
    clear_storage_fault,
    insufficient_resources,
    note_storage_fault,
)
from fusion_prime.platform.observability import get_logger

log = get_logger(__name__)

CONSUMED = Counter(
    "fp_bus_events_consumed_total", "Events whose effect was committed", ["subscription"]
)

AnyHandler = Handler | BatchHandler


def resolve_handler(target: str) -> AnyHandler:
    """Import "module:attribute"; fails loudly at start-up rather than at first message."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"handler {target!r} is not 'module:attribute'")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"handler {target!r} is not callable")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Consumer:
    """One subscription consumed by this process: (topic, subscription, handler).

    `handler` is a callable or a "module:attribute" string; registry subscriptions use
    the string form, tests and benchmarks may pass functions for test-only topics.
    """

    topic: str
    subscription: str
    handler: AnyHandler | str
    max_attempts: int = 5

    @classmethod
    def from_registry(cls, topic: Topic, sub: Subscription) -> Consumer:
        if sub.handler is None:
            raise ValueError(f"subscription {sub.name!r} is consumed outside this system")
        return cls(topic.name, sub.name, sub.handler, sub.max_attempts)

    def resolved(self) -> AnyHandler:
        return resolve_handler(self.handler) if isinstance(self.handler, str) else self.handler


@dataclass(frozen=True)
class ConsumerOptions:
    batch_size: int = 500
    visibility_timeout: float = 30.0
    poll_interval: float = 1.0
    retry_base: float = 2.0
    retry_max: float = 300.0
    retention: float = 86_400.0


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay before the next delivery after `attempts` failed deliveries."""
    return float(min(base * 2 ** max(attempts - 1, 0), cap))


def database_unavailable(exc: BaseException) -> bool:
    """Did the service's own database fail to answer (down, restarting, connection lost),
    rather than the handler fail on this message? Walks the cause chain."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(
            seen,
            OSError
            | asyncpg.PostgresConnectionError
            | asyncpg.CannotConnectNowError
            | asyncpg.AdminShutdownError
            | asyncpg.CrashShutdownError
            | asyncpg.ConnectionDoesNotExistError,
        ):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "orig", None)
    return False


def _error_text(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tb}"[:4000]


class ConsumerLoop:
    def __init__(
        self,
        consumer: Consumer,
        broker: PostgresBroker,
        sessions: async_sessionmaker[AsyncSession],
        options: ConsumerOptions | None = None,
    ) -> None:
        self.consumer = consumer
        self.broker = broker
        self.sessions = sessions
        self.options = options or ConsumerOptions()
        self.handler = consumer.resolved()
        # a set-based (batch) handler works through a backlog in growing leases (doubling
        # while they come back full, up to 4x batch_size): its cost per batch is mostly
        # round trips, which a larger batch amortises. One short lease resets the size.
        # A per-message handler keeps batch_size (one transaction of N handler calls).
        grow = 4 if is_batch_handler(self.handler) else 1
        self.max_batch_size = self.options.batch_size * grow
        self._wake = asyncio.Event()

    @property
    def subscription(self) -> str:
        return self.consumer.subscription

    async def setup(self) -> None:
        await self.broker.ensure_subscription(
            self.consumer.topic, self.consumer.subscription, self.consumer.max_attempts
        )

    async def run(self) -> None:
        await self.setup()
        listener = Listener(self.broker.dsn, NOTIFY_CHANNEL, self._on_notify)
        size = self.options.batch_size
        try:
            while True:
                await listener.ensure()
                self._wake.clear()
                n = await self.run_once(size)
                if n >= size:
                    size = min(size * 2, self.max_batch_size)
                    continue
                size = self.options.batch_size
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.options.poll_interval)
                except TimeoutError:
                    pass
        finally:
            await listener.close()

    def _on_notify(self, payload: str) -> None:
        # dead letters notify with an empty payload: they may unblock a subject
        if payload in ("", self.consumer.topic):
            self._wake.set()

    async def run_once(self, limit: int | None = None) -> int:
        """Lease one batch (`limit` messages, default batch_size) and settle every message
        in it; returns the batch size."""
        token = uuid.uuid4()
        batch = await self.broker.lease(
            self.subscription,
            limit or self.options.batch_size,
            self.options.visibility_timeout,
            token,
        )
        if not batch:
            return 0
        deliverable: list[tuple[LeasedMessage, Envelope]] = []
        for msg in batch:
            if msg.attempts > self.consumer.max_attempts:
                # earlier deliveries never settled (the consumer died each time)
                await self.broker.dead_letter(
                    self.subscription,
                    msg.id,
                    token,
                    f"lease expired {msg.attempts - 1} times without an ack "
                    f"(max_attempts={self.consumer.max_attempts})",
                )
                continue
            try:
                deliverable.append((msg, Envelope.from_json(msg.envelope_json)))
            except ValidationError as exc:
                await self.broker.dead_letter(
                    self.subscription, msg.id, token, f"invalid envelope: {exc}"[:4000]
                )
        if not deliverable:
            return len(batch)
        try:
            async with self.sessions() as session, session.begin():
                fresh = await consume_batch(
                    session, self.subscription, [e for _, e in deliverable], self.handler
                )
        except Exception as exc:
            full = insufficient_resources(exc)
            if full is not None:
                # a full disk (or memory, connections) on the service's server: no
                # message's fault either; readiness says so until a batch commits again
                note_storage_fault(full)
            if full is not None or database_unavailable(exc):
                # not the messages' fault: give them back without spending an attempt (a
                # 30 s outage used to burn every attempt and dead-letter healthy events)
                await self.broker.release([m.id for m, _ in deliverable], token)
                log.warning(
                    "service database unavailable; messages released",
                    subscription=self.subscription,
                    size=len(deliverable),
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                await asyncio.sleep(self.options.poll_interval)
                return 0
            if len(deliverable) == 1:
                await self._failed(deliverable[0][0], token, exc)
                return len(batch)
            log.info(
                "batch failed; isolating",
                subscription=self.subscription,
                size=len(deliverable),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            await self._isolate(deliverable, token)
            return len(batch)
        clear_storage_fault()
        await self.broker.ack(
            self.subscription,
            [m.id for m, _ in deliverable],
            token,
            retention=self.options.retention,
        )
        CONSUMED.labels(self.subscription).inc(fresh)  # redeliveries the inbox absorbed: 0
        return len(batch)

    async def _isolate(self, items: list[tuple[LeasedMessage, Envelope]], token: uuid.UUID) -> None:
        """One transaction per message; a failed subject's later messages wait their turn."""
        blocked: set[str] = set()
        done: list[int] = []
        released: list[int] = []
        fresh = 0
        for msg, env in items:
            if msg.subject in blocked:
                released.append(msg.id)
                continue
            try:
                async with self.sessions() as session, session.begin():
                    fresh += await consume_batch(session, self.subscription, [env], self.handler)
            except Exception as exc:
                blocked.add(msg.subject)
                full = insufficient_resources(exc)
                if full is not None:
                    note_storage_fault(full)
                if full is not None or database_unavailable(exc):
                    released.append(msg.id)  # the database's state, not this message's
                    continue
                await self._failed(msg, token, exc)
                continue
            done.append(msg.id)
        await self.broker.ack(self.subscription, done, token, retention=self.options.retention)
        await self.broker.release(released, token)
        CONSUMED.labels(self.subscription).inc(fresh)

    async def _failed(self, msg: LeasedMessage, token: uuid.UUID, exc: BaseException) -> None:
        error = _error_text(exc)
        if msg.attempts >= self.consumer.max_attempts:
            await self.broker.dead_letter(self.subscription, msg.id, token, error)
            return
        delay = backoff(msg.attempts, self.options.retry_base, self.options.retry_max)
        log.warning(
            "handler failed; will retry",
            subscription=self.subscription,
            event_id=str(msg.event_id),
            attempt=msg.attempts,
            delay=delay,
            error=error[:300],
        )
        await self.broker.nack(self.subscription, msg.id, token, error, delay)
