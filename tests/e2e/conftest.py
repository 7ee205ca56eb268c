"""The real stack for end-to-end tests: one bus database, three service processes.

Everything is real: PostgreSQL, each service's migrations, the postgres broker in a bus
database shared by all services (as `fusion-prime up` runs them), and every service as a
`fusion-prime serve <svc>` subprocess spoken to over HTTP. Tests assert on the tables.
The stack is started once per module (starting processes is the expensive part).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fusion_prime.compliance.spec import SPEC as COMPLIANCE
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import PostgresBroker
from fusion_prime.risk.spec import SPEC as RISK
from fusion_prime.settlement.spec import SPEC as SETTLEMENT
from tests.harness import (
    BUS_MIGRATIONS_DIR,
    REPO_ROOT,
    DatabaseFactory,
    ServiceProcess,
    _env,
    count_rows,
)
from tests.settlement.factory import WEBHOOK_KEY

# Subscriptions a downstream reader would declare on the topics the registry gives no
# subscriber yet; a topic without subscriptions keeps nothing in the broker (like Pub/Sub).
ESCROWS_OBSERVER = "e2e-escrows-observer"
DECISIONS_OBSERVER = "e2e-decisions-observer"
# The external signer's queue: declared by the registry (`events migrate`), not by the test,
# so a command that nobody subscribed to cannot pass here unnoticed.
SIGNER = "settlement-signer"

BUS_ENV = {
    "FP_BUS_POLL_INTERVAL": "0.2",
    "FP_BUS_RETRY_BASE": "0.2",
    "FP_BUS_RETRY_MAX": "1",
    "FP_BUS_VISIBILITY_TIMEOUT": "3",
}
SERVICE_ENV = {
    "SETTLEMENT_WEBHOOK_KEY": WEBHOOK_KEY,
    "KYC_WEBHOOK_SECRET": "e2e-kyc-webhook-secret-0123456789",
    "SETTLEMENT_COMMAND_POLL_INTERVAL": "0.1",
    "RISK_SWEEP_INTERVAL": "0.5",  # prices going stale are noticed within a second
}


def cli(
    *args: str, bus_url: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`fusion-prime ...` as an operator runs it (a fresh process, FP_BUS_URL from env)."""
    extra = {"COLUMNS": "200"}  # rich tables unfolded, as on an operator's terminal
    if bus_url:
        extra["FP_BUS_URL"] = bus_url
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", *args],
        env=_env(None, extra),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_jsonl(path: Path, envelopes: Sequence[Envelope]) -> Path:
    path.write_text("".join(e.to_json() + "\n" for e in envelopes), encoding="utf-8")
    return path


async def publish_file(bus_url: str, topic: str, path: Path) -> None:
    """The operator path: `fusion-prime events publish TOPIC FILE`."""
    result = await asyncio.to_thread(cli, "events", "publish", topic, str(path), bus_url=bus_url)
    assert result.returncode == 0, result.stdout + result.stderr


async def prepare_bus(bus_url: str, *observers: tuple[str, str]) -> None:
    """`fusion-prime events migrate` (declares the registry), then extra subscriptions."""
    result = await asyncio.to_thread(cli, "events", "migrate", bus_url=bus_url)
    assert result.returncode == 0, result.stdout + result.stderr
    async with PostgresBroker(bus_url, pool_size=1) as broker:
        for topic, name in observers:
            await broker.ensure_subscription(topic, name, 5)


async def drained(bus_url: str, subscription: str) -> bool:
    """Nothing of the subscription left unacknowledged in the broker."""
    return not await count_rows(
        bus_url, "bus_messages", "subscription = $1 AND acked_at IS NULL", subscription
    )


def start_all(procs: Sequence[ServiceProcess], timeout: float = 90) -> None:
    """Start every process first, then wait: the start-ups overlap on the two cores."""
    for p in procs:
        p.start()
    for p in procs:
        p.wait_ready(timeout)


@dataclass
class Stack:
    bus: str
    db: dict[str, str]
    procs: dict[str, ServiceProcess]
    log_dir: Path
    extra: dict[str, object] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return self.procs[service].base_url


@pytest.fixture(scope="module")
async def stack(
    db_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    bus = await db_factory.create("bus", BUS_MIGRATIONS_DIR)
    dbs = {
        "settlement": await db_factory.create("settlement", SETTLEMENT.migrations_dir),
        "risk": await db_factory.create("risk", RISK.migrations_dir),
        "compliance": await db_factory.create("compliance", COMPLIANCE.migrations_dir),
    }
    procs: dict[str, ServiceProcess] = {}
    try:
        await prepare_bus(
            bus,
            ("settlement.escrows.v1", ESCROWS_OBSERVER),
            ("compliance.decisions.v1", DECISIONS_OBSERVER),
        )
        env = {"FP_BUS_URL": bus, **BUS_ENV, **SERVICE_ENV}
        procs = {
            name: ServiceProcess.for_service(name, url, log_dir, extra_env=env)
            for name, url in dbs.items()
        }
        await asyncio.to_thread(start_all, list(procs.values()))
        yield Stack(bus, dbs, procs, log_dir)
    finally:
        for p in procs.values():
            p.terminate()
        for url in [bus, *dbs.values()]:
            await db_factory.drop(url)
