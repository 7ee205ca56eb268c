"""The chain relayer: escrow logs from an EVM node to `settlement.events.v1`, exactly once.

Each step reads the logs of one bounded block range that is at least `confirmations`
blocks below the head, and in ONE settlement transaction writes their envelopes to the
outbox, records them in `relayer_logs` (unique by chain id, tx hash, log index) and moves
the checkpoint (`relayer_checkpoints`) to the range's last block. A crash before the
commit leaves nothing; after it, everything: a restart resumes at the checkpoint.

Reorgs: the hash of the checkpoint block is compared with the node's before each step.
On a mismatch the relayer walks back through the stored hashes (`relayer_blocks`) to the
newest block the node still has, deletes what it published above it, publishes one
`chain.reorged` event per affected escrow and re-reads from there. With confirmations at
least as deep as the reorg, the replaced blocks were never read and nothing is reverted.

Several relayer processes for one chain: a session-level advisory lock keyed on the chain
lets one work while the others wait, and every advance re-checks the checkpoint under
`FOR UPDATE`, so even two active relayers cannot publish a range twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.outbox import OutboxRow, publish_rows
from fusion_prime.platform.observability import get_logger
from fusion_prime.settlement.chain import (
    EVENT_ID_NAMESPACE,
    DecodedLog,
    Header,
    JsonRpc,
    RangeTooLargeError,
    RpcError,
    TransientRpcError,
    decode_log,
    event_topics,
    header,
)
from fusion_prime.settlement.settings import RelayerSettings

log = get_logger(__name__)

TOPIC = "settlement.events.v1"
SOURCE = "settlement-relayer"
REORGED = "chain.reorged"
# pg_try_advisory_lock(class, chain id): the class says "settlement relayer"
LOCK_CLASS = 0x5E771E
# logs published per transaction at most (rounded to whole blocks)
MAX_LOGS_PER_STEP = 5000
# blocks of the first eth_getLogs of a process; then sized by the log density seen
FIRST_RANGE = 100

HEAD = Gauge("fp_settlement_relayer_head_block", "Chain head seen by the relayer", ["chain_id"])
CHECKPOINT = Gauge(
    "fp_settlement_relayer_checkpoint_block", "Last block whose logs are published", ["chain_id"]
)
LAG_BLOCKS = Gauge("fp_settlement_relayer_lag_blocks", "Head minus checkpoint", ["chain_id"])
LAG_SECONDS = Gauge(
    "fp_settlement_relayer_lag_seconds",
    "Head block time minus checkpoint block time",
    ["chain_id"],
)
PUBLISHED = Counter(
    "fp_settlement_relayer_events_published_total", "Chain events published", ["chain_id", "type"]
)
REORGS = Counter(
    "fp_settlement_relayer_reorgs_total", "Reorgs that removed read blocks", ["chain_id"]
)
RPC_FAILURES = Counter(
    "fp_settlement_relayer_rpc_failures_total",
    "Relayer steps that failed on the node (retried, checkpoint unchanged)",
    ["chain_id", "kind"],
)


class ChainMismatchError(RuntimeError):
    """The node at ETH_RPC_URL serves another chain than SETTLEMENT_CHAIN_ID."""


class ReorgTooDeepError(RuntimeError):
    """No stored block hash is on the node's chain any more: an operator must look."""


@dataclass(frozen=True)
class Checkpoint:
    number: int
    hash: str | None


@dataclass(frozen=True)
class StepResult:
    caught_up: bool
    published: int = 0
    to_block: int | None = None


class Relayer:
    def __init__(
        self,
        engine: AsyncEngine,
        rpc: JsonRpc,
        *,
        chain_id: int,
        factory: str,
        start_block: int = 0,
        confirmations: int = 12,
        max_block_range: int = 2000,
        reorg_window: int = 128,
        poll_interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.rpc = rpc
        self.chain_id = chain_id
        self.factory = factory.lower()
        self.start_block = start_block
        self.confirmations = confirmations
        self.max_block_range = max_block_range
        self.reorg_window = reorg_window
        self.poll_interval = poll_interval
        # span: the widest range the node accepts (halved on a refusal, regrown after good
        # steps); fit: the range expected to hold about MAX_LOGS_PER_STEP logs, from the
        # density of the last range (a dense backfill is not read 4x and cut, a sparse
        # chain widens 4x per step up to the span)
        self.span = max_block_range
        self.fit = min(max_block_range, FIRST_RANGE)
        self._good_steps = 0
        self._label = str(chain_id)
        self._topics = event_topics()

    @classmethod
    def from_settings(cls, engine: AsyncEngine, settings: RelayerSettings) -> Relayer:
        assert settings.eth_rpc_url is not None
        assert settings.chain_id is not None
        assert settings.factory_address is not None
        rpc = JsonRpc(settings.eth_rpc_url.get_secret_value(), timeout=settings.rpc_timeout)
        return cls(
            engine,
            rpc,
            chain_id=settings.chain_id,
            factory=settings.factory_address,
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            max_block_range=settings.max_block_range,
            reorg_window=settings.reorg_window,
            poll_interval=settings.relayer_poll_interval,
        )

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: take the chain's lock (or wait for it), then relay until cancelled."""
        try:
            await self.check_chain()
            while True:
                async with self.leadership() as lead:
                    if lead is None:
                        await asyncio.sleep(self.poll_interval)
                        continue
                    log.info("relayer leading", chain_id=self.chain_id, factory=self.factory)
                    await self._relay(lead)
        finally:
            await self.rpc.close()

    async def _relay(self, lead: AsyncConnection) -> None:
        delay = self.poll_interval
        while True:
            await lead.execute(text("SELECT 1"))  # the lock's session is still alive
            await lead.commit()
            try:
                result = await self.step()
            except (TransientRpcError, RpcError) as exc:
                kind = "range" if isinstance(exc, RangeTooLargeError) else type(exc).__name__
                RPC_FAILURES.labels(self._label, kind).inc()
                log.warning(
                    "relayer step failed; checkpoint unchanged",
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = self.poll_interval
            if result.caught_up:
                await asyncio.sleep(self.poll_interval)

    @asynccontextmanager
    async def leadership(self) -> AsyncIterator[AsyncConnection | None]:
        """A connection holding this chain's advisory lock, or None if another has it."""
        async with self.engine.connect() as conn:
            got = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:k, :c)"), {"k": LOCK_CLASS, "c": self.chain_id}
            )
            await conn.commit()
            try:
                yield conn if got else None
            finally:
                if got:
                    try:
                        await conn.execute(
                            text("SELECT pg_advisory_unlock(:k, :c)"),
                            {"k": LOCK_CLASS, "c": self.chain_id},
                        )
                        await conn.commit()
                    except Exception:  # the session is gone: so is its lock
                        log.warning("relayer lock connection lost", chain_id=self.chain_id)

    async def check_chain(self) -> None:
        served = int(await self.rpc.call("eth_chainId", []), 16)
        if served != self.chain_id:
            raise ChainMismatchError(
                f"ETH_RPC_URL serves chain {served}, SETTLEMENT_CHAIN_ID is {self.chain_id}"
            )

    async def run_until_caught_up(self, max_steps: int = 100_000) -> int:
        """Step until the confirmed head is published (tests, benchmarks); events published."""
        total = 0
        for _ in range(max_steps):
            result = await self.step()
            total += result.published
            if result.caught_up:
                return total
        raise RuntimeError(f"not caught up after {max_steps} steps")

    # -- one step ---------------------------------------------------------------------

    async def step(self) -> StepResult:
        head = int(await self.rpc.call("eth_blockNumber", []), 16)
        checkpoint = await self._checkpoint()
        if checkpoint.hash is not None:
            (now,) = await self._headers([checkpoint.number])
            if now is None or now.hash != checkpoint.hash:
                await self._rewind(checkpoint)
                return StepResult(caught_up=False)
        safe = head - self.confirmations
        frm = checkpoint.number + 1
        if safe < frm:
            (head_header,) = await self._headers([head])
            if head_header is not None:
                at = await self._touch(head_header)
                self._gauges(checkpoint.number, head_header, at)
            return StepResult(caught_up=True)
        to = min(safe, frm + min(self.span, self.fit) - 1)
        try:
            raw_logs = await self.rpc.call(
                "eth_getLogs",
                [
                    {
                        "fromBlock": hex(frm),
                        "toBlock": hex(to),
                        "address": self.factory,
                        "topics": [self._topics],
                    }
                ],
            )
        except RangeTooLargeError:
            if to == frm:
                raise
            self.span = max(1, (to - frm + 1) // 2)
            self._good_steps = 0
            log.info("node refused the block range; halving", blocks=to - frm + 1, now=self.span)
            return StepResult(caught_up=False)
        raw_logs = [r for r in raw_logs if not r.get("removed")]
        if len(raw_logs) > MAX_LOGS_PER_STEP:
            # one transaction per at most ~MAX_LOGS_PER_STEP logs (whole blocks), so the
            # consumer works while the relayer reads on (`fit` below sizes the next range)
            raw_logs.sort(key=lambda r: (int(r["blockNumber"], 16), int(r["logIndex"], 16)))
            cut = int(raw_logs[MAX_LOGS_PER_STEP]["blockNumber"], 16)
            first_block = int(raw_logs[0]["blockNumber"], 16)
            to = cut - 1 if cut > first_block else cut
            raw_logs = [r for r in raw_logs if int(r["blockNumber"], 16) <= to]
        blocks = to - frm + 1
        if raw_logs:
            self.fit = max(1, min(blocks * 4, blocks * MAX_LOGS_PER_STEP // len(raw_logs)))
        else:
            self.fit = blocks * 4
        self.fit = min(self.fit, self.max_block_range)
        window_from = max(frm, safe - self.reorg_window + 1)
        numbers = sorted({to, head} | set(range(window_from, to + 1)))
        fetched = await self._headers(numbers)
        headers = {h.number: h for h in fetched if h is not None}
        if to not in headers or head not in headers:
            return StepResult(caught_up=False)  # the chain moved under us; read again
        decoded = []
        for raw in raw_logs:
            item = decode_log(self.chain_id, raw)
            if item is None:
                continue
            known = headers.get(item.block_number)
            if known is not None and known.hash != item.block_hash:
                return StepResult(caught_up=False)  # logs and headers of different forks
            decoded.append(item)
        first = headers.get(frm)
        if (
            first is not None
            and checkpoint.hash is not None
            and first.parent_hash != checkpoint.hash
        ):
            return StepResult(caught_up=False)  # a reorg began since the check: next step sees it
        decoded.sort(key=lambda d: (d.block_number, d.log_index))
        stored = [headers[n] for n in numbers if n <= to and n in headers]
        async with self.sessions() as session, session.begin():
            published = await self._advance(
                session, checkpoint, headers[to], decoded, stored, headers[head]
            )
        if published is None:
            return StepResult(caught_up=False)  # another relayer moved the checkpoint
        self._good_steps += 1
        if self._good_steps >= 4 and self.span < self.max_block_range:
            self.span = min(self.max_block_range, self.span * 2)
            self._good_steps = 0
        self._gauges(to, headers[head], headers[to].timestamp)
        return StepResult(caught_up=to >= safe, published=published, to_block=to)

    async def _headers(self, numbers: Sequence[int]) -> list[Header | None]:
        out: list[Header | None] = []
        for i in range(0, len(numbers), 200):
            chunk = numbers[i : i + 200]
            raws = await self.rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in chunk])
            out.extend(header(r) if r else None for r in raws)
        return out

    def _gauges(self, checkpoint: int, head: Header, checkpoint_time: float | None) -> None:
        HEAD.labels(self._label).set(head.number)
        CHECKPOINT.labels(self._label).set(checkpoint)
        LAG_BLOCKS.labels(self._label).set(head.number - checkpoint)
        if checkpoint_time is not None:
            LAG_SECONDS.labels(self._label).set(max(0.0, head.timestamp - checkpoint_time))

    # -- storage ----------------------------------------------------------------------

    async def _checkpoint(self) -> Checkpoint:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO relayer_checkpoints (chain_id, contract_address, block_number) "
                    "VALUES (:c, :a, :b) ON CONFLICT (chain_id) DO NOTHING"
                ),
                {"c": self.chain_id, "a": self.factory, "b": self.start_block - 1},
            )
            row = (
                await conn.execute(
                    text(
                        "SELECT block_number, block_hash, contract_address "
                        "FROM relayer_checkpoints WHERE chain_id = :c"
                    ),
                    {"c": self.chain_id},
                )
            ).one()
        if row.contract_address != self.factory:
            raise RuntimeError(
                f"chain {self.chain_id} was relayed for contract {row.contract_address}, "
                f"not {self.factory}: refusing to mix two factories in one checkpoint"
            )
        return Checkpoint(row.block_number, row.block_hash)

    async def _touch(self, head: Header) -> float | None:
        """Record the head seen (for the lag); the checkpoint block's time, if known."""
        async with self.engine.begin() as conn:
            at = await conn.scalar(
                text(
                    "UPDATE relayer_checkpoints SET head_number = :n, head_time = :t, "
                    "updated_at = now() WHERE chain_id = :c RETURNING block_time"
                ),
                {"c": self.chain_id, "n": head.number, "t": _time(head.timestamp)},
            )
        return at.timestamp() if at is not None else None

    async def _lock_checkpoint(self, session: AsyncSession, expected: Checkpoint) -> bool:
        current = await session.scalar(
            text("SELECT block_number FROM relayer_checkpoints WHERE chain_id = :c FOR UPDATE"),
            {"c": self.chain_id},
        )
        return bool(current == expected.number)

    async def _advance(
        self,
        session: AsyncSession,
        checkpoint: Checkpoint,
        to: Header,
        decoded: Sequence[DecodedLog],
        blocks: Sequence[Header],
        head: Header,
    ) -> int | None:
        if not await self._lock_checkpoint(session, checkpoint):
            return None
        new: set[uuid.UUID] = set()
        if decoded:
            result = await session.execute(
                text(
                    "INSERT INTO relayer_logs (chain_id, tx_hash, log_index, block_number, "
                    "block_hash, escrow_address, event_type, event_id) "
                    "SELECT :c, * FROM unnest(CAST(:t AS text[]), CAST(:l AS integer[]), "
                    "CAST(:b AS bigint[]), CAST(:h AS text[]), CAST(:e AS text[]), "
                    "CAST(:ty AS text[]), CAST(:id AS uuid[])) "
                    "ON CONFLICT DO NOTHING RETURNING event_id"
                ),
                {
                    "c": self.chain_id,
                    "t": [d.tx_hash for d in decoded],
                    "l": [d.log_index for d in decoded],
                    "b": [d.block_number for d in decoded],
                    "h": [d.block_hash for d in decoded],
                    "e": [d.escrow for d in decoded],
                    "ty": [d.event_type for d in decoded],
                    "id": [d.event_id for d in decoded],
                },
            )
            new = {row[0] for row in result}
            rows = [_outbox_row(d) for d in decoded if d.event_id in new]
            await publish_rows(session, rows)
            for d in decoded:
                if d.event_id in new:
                    PUBLISHED.labels(self._label, d.event_type).inc()
        await session.execute(
            text(
                "INSERT INTO relayer_blocks (chain_id, block_number, block_hash) "
                "SELECT :c, * FROM unnest(CAST(:n AS bigint[]), CAST(:h AS text[])) "
                "ON CONFLICT (chain_id, block_number) "
                "DO UPDATE SET block_hash = excluded.block_hash"
            ),
            {"c": self.chain_id, "n": [b.number for b in blocks], "h": [b.hash for b in blocks]},
        )
        await session.execute(
            text("DELETE FROM relayer_blocks WHERE chain_id = :c AND block_number < :keep"),
            {"c": self.chain_id, "keep": to.number - self.reorg_window},
        )
        await session.execute(
            text(
                "UPDATE relayer_checkpoints SET block_number = :n, block_hash = :h, "
                "block_time = :bt, head_number = :hn, head_time = :ht, updated_at = now() "
                "WHERE chain_id = :c"
            ),
            {
                "c": self.chain_id,
                "n": to.number,
                "h": to.hash,
                "bt": _time(to.timestamp),
                "hn": head.number,
                "ht": _time(head.timestamp),
            },
        )
        return len(new)

    # -- reorgs -----------------------------------------------------------------------

    async def _rewind(self, checkpoint: Checkpoint) -> None:
        """Back to the newest stored block the node still has; `chain.reorged` for the rest."""
        async with self.engine.connect() as conn:
            stored = (
                await conn.execute(
                    text(
                        "SELECT block_number, block_hash FROM relayer_blocks "
                        "WHERE chain_id = :c AND block_number <= :n ORDER BY block_number DESC"
                    ),
                    {"c": self.chain_id, "n": checkpoint.number},
                )
            ).all()
        ancestor: Header | None = None
        for i in range(0, len(stored), 100):
            chunk = stored[i : i + 100]
            found = await self._headers([row.block_number for row in chunk])
            for row, node in zip(chunk, found, strict=True):
                if node is not None and node.hash == row.block_hash:
                    ancestor = node
                    break
            if ancestor is not None:
                break
        if ancestor is None:
            raise ReorgTooDeepError(
                f"chain {self.chain_id}: none of the {len(stored)} stored block hashes up to "
                f"block {checkpoint.number} is on the node's chain (reorg deeper than "
                "SETTLEMENT_REORG_WINDOW?); relaying stopped for this chain"
            )
        async with self.sessions() as session, session.begin():
            if not await self._lock_checkpoint(session, checkpoint):
                return
            removed = (
                await session.execute(
                    text(
                        "DELETE FROM relayer_logs WHERE chain_id = :c AND block_number > :n "
                        "RETURNING escrow_address, event_type, tx_hash, log_index, "
                        "block_number, block_hash, event_id"
                    ),
                    {"c": self.chain_id, "n": ancestor.number},
                )
            ).all()
            await session.execute(
                text("DELETE FROM relayer_blocks WHERE chain_id = :c AND block_number > :n"),
                {"c": self.chain_id, "n": ancestor.number},
            )
            await session.execute(
                text(
                    "UPDATE relayer_checkpoints SET block_number = :n, block_hash = :h, "
                    "block_time = :bt, reorgs = reorgs + 1, updated_at = now() "
                    "WHERE chain_id = :c"
                ),
                {
                    "c": self.chain_id,
                    "n": ancestor.number,
                    "h": ancestor.hash,
                    "bt": _time(ancestor.timestamp),
                },
            )
            by_escrow: dict[str, list[dict[str, Any]]] = {}
            for r in sorted(removed, key=lambda r: (r.block_number, r.log_index)):
                by_escrow.setdefault(r.escrow_address, []).append(
                    {
                        "type": r.event_type,
                        "event_id": str(r.event_id),
                        "tx_hash": r.tx_hash,
                        "log_index": r.log_index,
                        "block_number": r.block_number,
                        "block_hash": r.block_hash,
                    }
                )
            rows = []
            for escrow, logs in sorted(by_escrow.items()):
                data = {
                    "chain_id": self.chain_id,
                    "escrow": escrow,
                    "ancestor_block": ancestor.number,
                    "ancestor_hash": ancestor.hash,
                    "replaced_checkpoint_hash": checkpoint.hash,
                    "removed": logs,
                }
                key = f"reorg:{self.chain_id}:{checkpoint.hash}:{ancestor.hash}:{escrow}"
                envelope = Envelope(
                    id=uuid.uuid5(EVENT_ID_NAMESPACE, key),
                    type=REORGED,
                    source=SOURCE,
                    subject=escrow,
                    data=data,
                )
                rows.append(OutboxRow(envelope.id, TOPIC, escrow, REORGED, envelope.to_json()))
            await publish_rows(session, rows)
        REORGS.labels(self._label).inc()
        log.warning(
            "chain reorganisation: published blocks replaced",
            chain_id=self.chain_id,
            ancestor=ancestor.number,
            depth=checkpoint.number - ancestor.number,
            removed_logs=len(removed),
            escrows=len(rows),
        )


def _time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _outbox_row(d: DecodedLog) -> OutboxRow:
    envelope = Envelope(
        id=d.event_id, type=d.event_type, source=SOURCE, subject=d.escrow, data=d.data
    )
    return OutboxRow(envelope.id, TOPIC, d.escrow, d.event_type, envelope.to_json())


async def relayer_status(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Per chain: checkpoint, head, lag in blocks and seconds (for /health/ready)."""
    rows = (
        await conn.execute(
            text(
                "SELECT chain_id, contract_address, block_number, block_time, head_number, "
                "head_time, reorgs, updated_at FROM relayer_checkpoints ORDER BY chain_id"
            )
        )
    ).all()
    out = []
    for r in rows:
        lag_seconds = None
        if r.head_time is not None and r.block_time is not None:
            lag_seconds = max(0.0, (r.head_time - r.block_time).total_seconds())
        out.append(
            {
                "chain_id": r.chain_id,
                "contract": r.contract_address,
                "checkpoint_block": r.block_number,
                "head_block": r.head_number,
                "lag_blocks": None if r.head_number is None else r.head_number - r.block_number,
                "lag_seconds": lag_seconds,
                "reorgs": r.reorgs,
                "updated_at": r.updated_at.isoformat(),
                "seconds_since_update": round(time.time() - r.updated_at.timestamp(), 3),
            }
        )
    return out
