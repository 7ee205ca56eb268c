"""How a service process gets its relay and consumers without writing any bus code.

`attach_bus(app, spec, settings)` (called by the app factory) resolves the consumers: every
registry subscription whose `service == spec.name`, plus `spec.consumes` (explicit
`Consumer(topic, subscription, handler)` triples for test-only topics). `BusWorkers`
then gives the lifespan its background loops: the outbox relay when the service
publishes, one consumer loop per subscription with FP_BUS=postgres (with FP_BUS=pubsub
consumption arrives through the push endpoint instead), and the retention cleanup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fusion_prime.platform.bus.consumer import Consumer, ConsumerLoop, ConsumerOptions
from fusion_prime.platform.bus.postgres import PostgresBroker
from fusion_prime.platform.bus.registry import subscriptions_of
from fusion_prime.platform.bus.relay import PostgresPublisher, Publisher, Relay
from fusion_prime.platform.database import DatabaseConfigError, normalise_database_url
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.settings import BaseServiceSettings

if TYPE_CHECKING:
    from fusion_prime.platform.runtime import BackgroundTask, Runtime
    from fusion_prime.platform.spec import ServiceSpec

log = get_logger(__name__)

CLEANUP_INTERVAL = 60.0


def consumers_for(spec: ServiceSpec) -> list[Consumer]:
    found = [Consumer.from_registry(t, s) for t, s in subscriptions_of(spec.name)]
    found.extend(spec.consumes)
    names = [c.subscription for c in found]
    if len(set(names)) != len(names):
        raise ValueError(f"{spec.name}: a subscription is declared twice: {names}")
    return found


def attach_bus(app: FastAPI, spec: ServiceSpec, settings: BaseServiceSettings) -> list[Consumer]:
    """Resolve handlers now (a missing one stops start-up); with FP_BUS=pubsub mount the
    push endpoint. With FP_BUS=postgres it does not exist: consumption is the consumer
    loops', and an endpoint nobody pushes to would only be a way in around the bus."""
    from fusion_prime.platform.bus.pubsub import push_router

    consumers = consumers_for(spec)
    app.state.bus_consumers = {c.subscription: c for c in consumers}
    app.state.bus_handlers = {c.subscription: c.resolved() for c in consumers}
    if consumers and settings.fp_bus == "pubsub":
        app.include_router(push_router)
    if (consumers or spec.publishes) and settings.fp_bus == "postgres" and settings.fp_bus_url:
        from fusion_prime.platform.bus.api import router as bus_router

        app.include_router(bus_router)
    return consumers


def normalise_bus_url(raw: str | None, service: str) -> URL:
    """FP_BUS_URL through the PostgreSQL-only guard; ValueError naming FP_BUS_URL if bad.

    Shared by the services and `fusion-prime events` so both refuse with the same words.
    """
    if not raw:
        raise ValueError(
            f"{service}: FP_BUS_URL is not set. With FP_BUS=postgres events travel through the "
            "bus database; set FP_BUS_URL=postgresql://USER:PASSWORD@HOST:5432/fp_bus "
            "(migrate it once with `fusion-prime events migrate`)."
        )
    try:
        return normalise_database_url(raw, service=service)
    except DatabaseConfigError as exc:  # the guard's message names DATABASE_URL; name ours
        text = str(exc).split(" (on Cloud Run")[0].replace("DATABASE_URL", "FP_BUS_URL")
        raise ValueError(text) from exc


def bus_url(settings: BaseServiceSettings, service: str) -> URL:
    return normalise_bus_url(settings.fp_bus_url, service)


def consumer_options(settings: BaseServiceSettings) -> ConsumerOptions:
    return ConsumerOptions(
        batch_size=settings.bus_batch_size,
        visibility_timeout=settings.bus_visibility_timeout,
        poll_interval=settings.bus_poll_interval,
        retry_base=settings.bus_retry_base,
        retry_max=settings.bus_retry_max,
        retention=settings.bus_retention,
    )


class BusWorkers:
    """The bus loops of one process, sharing one broker connection pool."""

    def __init__(
        self,
        service: str,
        settings: BaseServiceSettings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        publishes: bool,
        consumers: Sequence[Consumer],
    ) -> None:
        self.service = service
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.publishes = publishes
        self.consumers = list(consumers)
        self.broker: PostgresBroker | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_runtime(cls, spec: ServiceSpec, runtime: Runtime, app: FastAPI) -> BusWorkers:
        consumers: dict[str, Consumer] = getattr(app.state, "bus_consumers", {})
        return cls(
            spec.name,
            runtime.settings,
            runtime.engine,
            runtime.sessions,
            publishes=bool(spec.publishes),
            consumers=list(consumers.values()),
        )

    async def ensure_broker(self) -> PostgresBroker:
        """The process's broker pool (the `/bus/...` routes read through it)."""
        return await self._broker()

    async def _broker(self) -> PostgresBroker:
        async with self._lock:
            if self.broker is None:
                url = bus_url(self.settings, self.service)
                size = 2 + len(self.consumers) * self.settings.bus_consumer_concurrency
                self.broker = await PostgresBroker(
                    url, pool_size=size, app_name=f"{self.service}-bus"
                ).start()
            return self.broker

    def _publisher(self) -> Publisher:
        if self.settings.fp_bus == "pubsub":
            from fusion_prime.platform.bus.pubsub import PubSubPublisher

            if not self.settings.gcp_project:
                raise ValueError(f"{self.service}: FP_BUS=pubsub needs GCP_PROJECT")
            return PubSubPublisher(self.settings.gcp_project)
        assert self.broker is not None
        return PostgresPublisher(self.broker)

    def tasks(self) -> list[tuple[str, BackgroundTask]]:
        if not self.publishes and not self.consumers:
            return []
        if self.settings.fp_bus == "postgres" and not self.settings.fp_bus_url:
            # real processes are refused by the runner's preflight; an in-process app
            # (tests) keeps its events in the outbox until a relay runs
            log.warning("FP_BUS_URL not set: no relay or consumers in this process")
            return []
        out: list[tuple[str, BackgroundTask]] = []
        if self.publishes:
            out.append((f"{self.service}-relay", self._run_relay))
        if self.settings.fp_bus == "postgres":
            # several loops per subscription overlap database round trips; leasing is
            # serialised and in-flight subjects are skipped, so order per subject holds
            for c in self.consumers:
                for i in range(self.settings.bus_consumer_concurrency):
                    out.append((f"{self.service}-consumer-{c.subscription}-{i}", self._consume(c)))
            if self.consumers:
                out.append((f"{self.service}-bus-cleanup", self._cleanup))
        return out

    async def _run_relay(self) -> None:
        if self.settings.fp_bus == "postgres":
            await self._broker()
        relay = Relay(
            self.service,
            self.engine,
            self._publisher(),
            batch_size=self.settings.bus_batch_size,
            poll_interval=self.settings.bus_poll_interval,
            max_attempts=self.settings.bus_relay_max_attempts,
        )
        await relay.run()

    def _consume(self, consumer: Consumer) -> BackgroundTask:
        async def run() -> None:
            broker = await self._broker()
            loop = ConsumerLoop(consumer, broker, self.sessions, consumer_options(self.settings))
            await loop.run()

        return run

    async def _cleanup(self) -> None:
        broker = await self._broker()
        while True:
            if self.settings.bus_retention > 0:
                deleted = await broker.cleanup(self.settings.bus_retention)
                if deleted:
                    log.info("acked messages past retention deleted", count=deleted)
            await asyncio.sleep(CLEANUP_INTERVAL)

    async def close(self) -> None:
        if self.broker is not None:
            await self.broker.close()
            self.broker = None


@asynccontextmanager
async def running(workers: BusWorkers) -> AsyncIterator[BusWorkers]:
    """Run the workers' loops in this event loop (tests and benchmarks)."""
    from fusion_prime.platform.app import _supervise

    tasks = [asyncio.create_task(_supervise(name, t), name=name) for name, t in workers.tasks()]
    try:
        yield workers
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await workers.close()
