"""The polling loop's unit of work: one round (collect, then store in one transaction)
and the retention of raw observations. The caller owns nothing: each step opens its
own transaction, as the consumer wrapper does for a message."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.oracle import repository as repo
from fusion_prime.oracle.service import FeedOutcome, now_utc, store_round
from fusion_prime.oracle.sources import SourceSet
from fusion_prime.platform.observability import get_logger

log = get_logger(__name__)
ROUND_SECONDS = Histogram(
    "fp_oracle_round_seconds",
    "One polling round: collect (parallel) and store",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True)
class RoundReport:
    outcomes: list[FeedOutcome]
    collect_seconds: float
    store_seconds: float


async def poll_once(sessions: async_sessionmaker[AsyncSession], sources: SourceSet) -> RoundReport:
    async with sessions() as session, session.begin():
        feeds = await repo.current_feeds(session, enabled_only=True)
    started = time.perf_counter()
    observations = await sources.collect(feeds)
    collected = time.perf_counter()
    async with sessions() as session, session.begin():
        outcomes = await store_round(session, feeds, observations, now_utc())
    stored = time.perf_counter()
    ROUND_SECONDS.labels("collect").observe(collected - started)
    ROUND_SECONDS.labels("store").observe(stored - collected)
    return RoundReport(outcomes, collected - started, stored - collected)


async def prune_observations(
    sessions: async_sessionmaker[AsyncSession], retention: timedelta, batch: int = 10_000
) -> int:
    """Delete raw observations past retention in batches (short transactions)."""
    cutoff = now_utc() - retention
    total = 0
    while True:
        async with sessions() as session, session.begin():
            n = await repo.delete_observations_before(session, cutoff, batch)
        total += n
        if n < batch:
            return total
