"""Settlement use cases: ingest chain events, accept and submit commands.

Nothing here commits; the request dependency or the consumer wrapper owns the transaction,
so a state change, its history row, its outbox event and its webhook deliveries are one
atomic write.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.outbox import OutboxRow, publish, publish_rows
from fusion_prime.platform.errors import ConflictError, InvalidError, NotFoundError
from fusion_prime.platform.observability import get_logger
from fusion_prime.settlement import domain, repository
from fusion_prime.settlement.domain import Anomaly, Applied, ChainEvent, EscrowState, Park
from fusion_prime.settlement.events import event_data, parse_data

log = get_logger(__name__)

SERVICE = "settlement"
ESCROWS_TOPIC = "settlement.escrows.v1"
ESCROW_STATE_CHANGED = "escrow.state_changed"
COMMANDS_TOPIC = "settlement.commands.v1"
COMMAND_SUBMITTED = "settlement.command_submitted"
# Webhook event types: one per state an escrow can enter.
WEBHOOK_EVENT_TYPES = ("escrow.created", "escrow.approved", "escrow.released", "escrow.refunded")

EVENTS = Counter(
    "fp_settlement_chain_events_total",
    "Chain events by type and what happened to them",
    ["service", "type", "outcome"],
)
ANOMALIES = Counter(
    "fp_settlement_anomalies_total", "Chain events recorded as anomalies", ["service", "reason"]
)
COMMANDS = Counter(
    "fp_settlement_commands_total", "Settlement command status transitions", ["service", "status"]
)

_ACTION_OF = {
    domain.APPROVED: "approve",
    domain.RELEASED: "release",
    domain.REFUNDED: "refund",
    domain.ARBITER_CHANGED: "change_arbiter",
}


def escrow_snapshot(state: EscrowState) -> dict[str, Any]:
    return {
        "address": state.address,
        "chain_id": state.chain_id,
        "status": state.status,
        "payer": state.payer,
        "payee": state.payee,
        "arbiter": state.arbiter,
        "asset": state.asset,
        "decimals": state.decimals,
        "amount": str(state.amount),
        "release_delay": state.release_delay,
        "approvals_required": state.approvals_required,
        "approvers": list(state.approvers),
    }


@dataclass
class IngestResult:
    new: int = 0
    duplicates: int = 0
    applied: int = 0
    parked: int = 0
    anomalies: int = 0
    state_changes: int = 0


@dataclass
class _Writes:
    states: dict[str, EscrowState]
    approvals: list[repository.ApprovalRow]
    history: list[repository.HistoryRow]
    anomalies: list[repository.AnomalyRow]
    parked: list[tuple[int, str]]
    outbox: list[OutboxRow]
    webhooks: list[repository.WebhookEvent]
    matches: list[repository.CommandMatch]
    deployed: list[tuple[EscrowState, int]]


async def ingest(
    session: AsyncSession,
    items: Sequence[tuple[uuid.UUID, ChainEvent]],
) -> IngestResult:
    """Apply a batch of parsed chain events. Idempotent by (chain id, tx hash, log index)."""
    result = IngestResult()
    unique: dict[tuple[int, str, int], repository.NewChainEvent] = {}
    for envelope_id, event in items:
        if event.ref.key not in unique:
            unique[event.ref.key] = repository.NewChainEvent(
                envelope_id, event, json.dumps(event_data(event))
            )
    if not unique:
        return result
    addresses = sorted({i.event.escrow for i in unique.values()})
    # Lock first, then claim the chain keys: a concurrent batch with the same keys waits
    # here and then sees them as duplicates.
    await repository.lock_escrows(session, addresses)
    fresh_ids = await repository.insert_chain_events(session, list(unique.values()))
    result.new = len(fresh_ids)
    result.duplicates = len(items) - result.new
    if not fresh_ids:
        return result
    by_escrow: dict[str, list[tuple[int, ChainEvent]]] = defaultdict(list)
    for key, chain_event_id in fresh_ids.items():
        event = unique[key].event
        by_escrow[event.escrow].append((chain_event_id, event))
    states = await repository.load_states(session, list(by_escrow))
    deploying = [
        a
        for a, evs in by_escrow.items()
        if a not in states and any(isinstance(e, domain.Deployed) for _, e in evs)
    ]
    for chain_event_id, event_type, data in await repository.take_parked(session, deploying):
        event = parse_data(event_type, data)
        by_escrow[event.escrow].append((chain_event_id, event))

    writes = _Writes({}, [], [], [], [], [], [], [], [])
    now = datetime.now(UTC)
    for address, evs in by_escrow.items():
        _apply_escrow(address, states.get(address), evs, writes, result, now)

    await repository.upsert_escrows(session, list(writes.states.values()))
    await repository.insert_approvals(session, writes.approvals)
    await repository.insert_history(session, writes.history)
    await repository.insert_anomalies(session, writes.anomalies)
    await repository.park(session, writes.parked)
    await publish_rows(session, writes.outbox)
    await repository.insert_deliveries(session, writes.webhooks)
    confirmed = await repository.confirm_commands(session, writes.matches)
    confirmed += await repository.confirm_creations(session, writes.deployed)
    closed = [s.address for s in writes.states.values() if s.status in domain.TERMINAL]
    failed = await repository.fail_commands_of_closed(session, closed)
    if confirmed:
        COMMANDS.labels(SERVICE, "confirmed").inc(confirmed)
    if failed:
        COMMANDS.labels(SERVICE, "failed").inc(failed)
    return result


def _apply_escrow(
    address: str,
    state: EscrowState | None,
    events: list[tuple[int, ChainEvent]],
    writes: _Writes,
    result: IngestResult,
    now: datetime,
) -> None:
    ids = {e.ref.key: i for i, e in events}
    before = state
    final, outcomes = domain.fold(state, [e for _, e in events])
    for event, outcome in outcomes:
        chain_event_id = ids[event.ref.key]
        if isinstance(outcome, Park):
            writes.parked.append((chain_event_id, address))
            result.parked += 1
            EVENTS.labels(SERVICE, event.type, "parked").inc()
            continue
        if isinstance(outcome, Anomaly):
            writes.anomalies.append(
                repository.AnomalyRow(
                    address,
                    chain_event_id,
                    event.ref,
                    event.type,
                    outcome.reason,
                    outcome.detail,
                    # the state the event met: the final state of the escrow when it arrived
                    before.status if before is not None else None,
                )
            )
            result.anomalies += 1
            EVENTS.labels(SERVICE, event.type, "anomaly").inc()
            ANOMALIES.labels(SERVICE, outcome.reason).inc()
            continue
        assert isinstance(outcome, Applied)
        before = outcome.state
        result.applied += 1
        EVENTS.labels(SERVICE, event.type, "applied").inc()
        writes.history.append(
            repository.HistoryRow(
                address,
                chain_event_id,
                event.ref,
                event.type,
                outcome.from_status,
                outcome.to_status,
                json.dumps(outcome.details),
            )
        )
        if outcome.approver_role is not None and isinstance(event, domain.Approved):
            writes.approvals.append(
                repository.ApprovalRow(address, event.approver, outcome.approver_role, event.ref)
            )
        if isinstance(event, domain.Deployed):
            writes.deployed.append((outcome.state, chain_event_id))
        else:
            actor = (
                event.approver
                if isinstance(event, domain.Approved)
                else event.new_arbiter
                if isinstance(event, domain.ArbiterChanged)
                else None
            )
            writes.matches.append(
                repository.CommandMatch(address, _ACTION_OF[event.type], actor, chain_event_id)
            )
        if outcome.status_changed:
            result.state_changes += 1
            _state_change(outcome, event, writes, now)
    if final is not None and final is not state:
        writes.states[address] = final


def _state_change(outcome: Applied, event: ChainEvent, writes: _Writes, now: datetime) -> None:
    state = outcome.state
    data = {
        **escrow_snapshot(state),
        "from_status": outcome.from_status,
        "to_status": outcome.to_status,
        "block_number": event.ref.block_number,
        "tx_hash": event.ref.tx_hash,
        "log_index": event.ref.log_index,
    }
    envelope = Envelope(
        type=ESCROW_STATE_CHANGED, source=SERVICE, subject=state.address, data=data, time=now
    )
    writes.outbox.append(
        OutboxRow(
            envelope.id, ESCROWS_TOPIC, state.address, ESCROW_STATE_CHANGED, envelope.to_json()
        )
    )
    webhook_type = f"escrow.{outcome.to_status}"
    body = json.dumps(
        {"id": str(envelope.id), "type": webhook_type, "created_at": now.isoformat(), "data": data},
        separators=(",", ":"),
    )
    writes.webhooks.append(repository.WebhookEvent(envelope.id, webhook_type, state.address, body))


# -- commands -----------------------------------------------------------------------------

_COMMAND_FIELDS = (
    "action",
    "chain_id",
    "escrow_address",
    "payer",
    "payee",
    "arbiter",
    "asset_address",
    "asset_decimals",
    "amount",
    "approvals_required",
    "release_delay",
    "approver",
    "new_arbiter",
    "reference",
)

_COMMAND_COLUMNS = (
    "id, idempotency_key, action, chain_id, escrow_address, payer, payee, arbiter, "
    "asset_address, asset_decimals, amount, approvals_required, release_delay, approver, "
    "new_arbiter, reference, body, status, failure_reason, outbox_event_id, "
    "confirmed_chain_event_id, created_at, submitted_at, resolved_at, updated_at"
)


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def get_command(session: AsyncSession, command_id: uuid.UUID) -> dict[str, Any]:
    row = (
        (
            await session.execute(
                text(f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = :id"),
                {"id": command_id},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFoundError(f"command {command_id} does not exist")
    return dict(row)


async def create_command(
    session: AsyncSession, idempotency_key: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Store a validated command once per key. Returns (command, created_now).

    `body` is the request as validated (every field given, addresses normalised). The
    business checks that need the database (asset known, escrow exists, approver is a
    party) run before anything is written, so a refused command leaves no row.
    """
    digest = request_hash(body)
    existing = await _by_key(session, idempotency_key)
    if existing is not None:
        return _replay(existing, digest), False
    columns = await _resolve(session, body)
    command_id = uuid.uuid4()
    inserted = await session.execute(
        text(
            "INSERT INTO commands (id, idempotency_key, request_hash, action, chain_id, "
            "escrow_address, payer, payee, arbiter, asset_address, asset_decimals, amount, "
            "approvals_required, release_delay, approver, new_arbiter, reference, body, status) "
            "VALUES (:id, :key, :hash, :action, :chain_id, :escrow_address, :payer, :payee, "
            ":arbiter, :asset_address, :asset_decimals, :amount, :approvals_required, "
            ":release_delay, :approver, :new_arbiter, :reference, CAST(:body AS jsonb), "
            "'received') ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        ),
        {"id": command_id, "key": idempotency_key, "hash": digest, "body": json.dumps(body)}
        | columns,
    )
    if inserted.first() is None:
        # a concurrent request with the same key won the race
        raced = await _by_key(session, idempotency_key)
        assert raced is not None
        return _replay(raced, digest), False
    COMMANDS.labels(SERVICE, "received").inc()
    return await get_command(session, command_id), True


async def _by_key(session: AsyncSession, key: str) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    f"SELECT {_COMMAND_COLUMNS}, request_hash FROM commands "
                    "WHERE idempotency_key = :key"
                ),
                {"key": key},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def _replay(existing: dict[str, Any], digest: str) -> dict[str, Any]:
    if existing.pop("request_hash") != digest:
        raise ConflictError(
            "this Idempotency-Key was already used with a different request body",
            command_id=str(existing["id"]),
        )
    return existing


async def _resolve(session: AsyncSession, body: dict[str, Any]) -> dict[str, Any]:
    """Typed column values for a command, checked against assets and escrows."""
    cols: dict[str, Any] = dict.fromkeys(_COMMAND_FIELDS)
    cols.update({k: v for k, v in body.items() if k in cols})
    action = body["action"]
    if action == "create_escrow":
        asset = await repository.find_asset(session, body["chain_id"], body["asset"])
        if asset is None:
            raise InvalidError(
                f"asset {body['asset']!r} is not a known asset on chain {body['chain_id']}",
                field="asset",
            )
        cols["asset_address"] = asset["address"]
        cols["asset_decimals"] = asset["decimals"]
        cols["amount"] = Decimal(body["amount"])
        return cols
    escrow = await repository.get_escrow(session, body["escrow_address"])
    if escrow is None:
        raise NotFoundError(f"escrow {body['escrow_address']} does not exist")
    if body.get("chain_id") is not None and body["chain_id"] != escrow["chain_id"]:
        raise InvalidError(
            f"escrow {escrow['address']} is on chain {escrow['chain_id']}", field="chain_id"
        )
    cols["chain_id"] = escrow["chain_id"]
    if escrow["status"] in domain.TERMINAL:
        raise ConflictError(f"escrow {escrow['address']} is already {escrow['status']}")
    if action == "approve":
        parties = {escrow["payer"], escrow["payee"], escrow["arbiter"]}
        if body["approver"] not in parties:
            raise InvalidError(
                "approver must be the payer, payee or arbiter of the escrow", field="approver"
            )
    return cols


async def submit_received(session: AsyncSession, limit: int = 100) -> int:
    """Hand received commands to the external signer: one event each on the commands topic.

    'submitted' means exactly this: the command is durably queued in our outbox on
    settlement.commands.v1 (committed with the status change), from where the relay
    delivers it to the signer. Fusion Prime holds no keys and sends no transactions;
    the outcome is learned only from chain events (confirmed) or from the escrow reaching
    a state where the command can no longer happen (failed).
    """
    rows = (
        (
            await session.execute(
                # the escrow's status comes with each command (one query, not one per row);
                # NULL for create_escrow, whose escrow_address is set only on confirmation
                text(
                    f"SELECT {_COMMAND_COLUMNS}, (SELECT e.status FROM escrows e "
                    "WHERE e.address = commands.escrow_address) AS escrow_status "
                    "FROM commands WHERE status = 'received' "
                    "ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED"
                ),
                {"n": limit},
            )
        )
        .mappings()
        .all()
    )
    submitted = 0
    for row in rows:
        if row["escrow_status"] in domain.TERMINAL:
            await session.execute(
                text(
                    "UPDATE commands SET status = 'failed', failure_reason = :r, "
                    "resolved_at = now(), updated_at = now() WHERE id = :id"
                ),
                {"r": f"escrow is {row['escrow_status']} on chain", "id": row["id"]},
            )
            COMMANDS.labels(SERVICE, "failed").inc()
            continue
        envelope = await publish(
            session,
            COMMANDS_TOPIC,
            event_type=COMMAND_SUBMITTED,
            subject=row["escrow_address"] or str(row["id"]),
            data={"command_id": str(row["id"]), **row["body"]},
            source=SERVICE,
        )
        await session.execute(
            text(
                "UPDATE commands SET status = 'submitted', outbox_event_id = :e, "
                "submitted_at = now(), updated_at = now() WHERE id = :id"
            ),
            {"e": envelope.id, "id": row["id"]},
        )
        COMMANDS.labels(SERVICE, "submitted").inc()
        submitted += 1
    return submitted


async def expire_submitted(session: AsyncSession, timeout: float) -> int:
    """Fail submitted commands that no chain event confirmed within `timeout` seconds."""
    result = await session.execute(
        text(
            "UPDATE commands SET status = 'failed', failure_reason = 'no matching chain event "
            "within ' || CAST(:t AS text) || ' s of submission', resolved_at = now(), "
            "updated_at = now() WHERE status = 'submitted' "
            "AND submitted_at < now() - make_interval(secs => :t)"
        ),
        {"t": timeout},
    )
    expired = int(result.rowcount)  # type: ignore[attr-defined]
    if expired:
        COMMANDS.labels(SERVICE, "failed").inc(expired)
    return expired
