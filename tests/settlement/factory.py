"""Chain-event envelopes and a consumer driver for settlement tests and the bench."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.settlement.handlers import SUBSCRIPTION, handle_chain_events
from fusion_prime.settlement.spec import SPEC

USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
WEBHOOK_KEY = "test-webhook-key-" + "k" * 32


def new_address() -> str:
    return "0x" + secrets.token_hex(20)


def tx_hash() -> str:
    return "0x" + secrets.token_hex(32)


@dataclass
class Escrow:
    """One escrow's parties and a running chain position for its events."""

    address: str = field(default_factory=new_address)
    payer: str = field(default_factory=new_address)
    payee: str = field(default_factory=new_address)
    arbiter: str = field(default_factory=new_address)
    chain_id: int = 1
    block: int = 100
    log: int = 0

    def _coords(self, block: int | None, log: int | None) -> dict[str, Any]:
        if block is None:
            self.block += 1
            block = self.block
        if log is None:
            self.log += 1
            log = self.log
        return {
            "chain_id": self.chain_id,
            "tx_hash": tx_hash(),
            "log_index": log,
            "block_number": block,
            "escrow": self.address,
        }

    def deployed(
        self,
        *,
        amount: int | str = 1_000_000,
        required: int = 2,
        block: int | None = None,
        log: int | None = None,
        **extra: Any,
    ) -> Envelope:
        data = self._coords(block, log) | {
            "payer": self.payer,
            "payee": self.payee,
            "arbiter": self.arbiter,
            "asset": USDC,
            "decimals": 6,
            "amount": str(amount),
            "release_delay": 3600,
            "approvals_required": required,
        }
        return envelope("escrow.deployed", data | extra)

    def approved(
        self, approver: str, *, block: int | None = None, log: int | None = None, **extra: Any
    ) -> Envelope:
        data = self._coords(block, log) | {"approver": approver}
        return envelope("escrow.approved", data | extra)

    def released(
        self, *, block: int | None = None, log: int | None = None, **extra: Any
    ) -> Envelope:
        return envelope("escrow.released", self._coords(block, log) | extra)

    def refunded(
        self, *, block: int | None = None, log: int | None = None, **extra: Any
    ) -> Envelope:
        return envelope("escrow.refunded", self._coords(block, log) | extra)

    def arbiter_changed(
        self, new_arbiter: str, *, block: int | None = None, log: int | None = None, **extra: Any
    ) -> Envelope:
        data = self._coords(block, log) | {"new_arbiter": new_arbiter}
        return envelope("escrow.arbiter_changed", data | extra)


def envelope(event_type: str, data: dict[str, Any]) -> Envelope:
    return Envelope(
        type=event_type, source="chain-indexer", subject=str(data.get("escrow", "x")), data=data
    )


def redeliver(e: Envelope, *, new_id: bool = False) -> Envelope:
    """The same event again: same envelope id, or (indexer re-emit) a new id."""
    if not new_id:
        return e
    return Envelope(type=e.type, source=e.source, subject=e.subject, data=e.data)


@asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(normalise_database_url(url, service="tests"), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


async def deliver(engine: AsyncEngine, envelopes: Sequence[Envelope]) -> int:
    """What the bus consumer does: claim and handle a batch in one transaction."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        return await consume_batch(session, SUBSCRIPTION, envelopes, handle_chain_events)


__all__ = ["SPEC", "USDC", "WEBHOOK_KEY", "Escrow", "deliver", "engine_for", "redeliver"]


async def wait_for(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async `check()` until it returns something truthy (bounded)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


FAST = {
    "SETTLEMENT_WEBHOOK_KEY": WEBHOOK_KEY,
    "SETTLEMENT_COMMAND_POLL_INTERVAL": "0.05",
    "SETTLEMENT_WEBHOOK_POLL_INTERVAL": "0.05",
}
