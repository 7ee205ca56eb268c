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
from dataclasses import dataclass, field
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
from fusion_prime.settlement.domain import Anomaly, Applied, ChainEvent, EscrowState, Park, Status
from fusion_prime.settlement.events import event_data, parse_data

log = get_logger(__name__)

SERVICE = "settlement"
ESCROWS_TOPIC = "settlement.escrows.v1"
ESCROW_STATE_CHANGED = "escrow.state_changed"
COMMANDS_TOPIC = "settlement.commands.v1"
COMMAND_SUBMITTED = "settlement.command_submitted"
COMMAND_CANCELLED = "settlement.command_cancelled"
# Webhook event types: one per state an escrow can enter.
WEBHOOK_EVENT_TYPES = (
    "escrow.created", "escrow.approved", "escrow.disputed", "escrow.released", "escrow.refunded",
)  # fmt: skip

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
    states: dict[str, EscrowState] = field(default_factory=dict)
    approvals: list[repository.ApprovalRow] = field(default_factory=list)
    unapproved: list[tuple[str, str]] = field(default_factory=list)  # (escrow, approver)
    cleared: list[str] = field(default_factory=list)  # escrows whose approvals are rewritten
    history: list[repository.HistoryRow] = field(default_factory=list)
    anomalies: list[repository.AnomalyRow] = field(default_factory=list)
    superseded: list[tuple[int, int]] = field(default_factory=list)  # (event id, by event id)
    parked: list[tuple[int, str]] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    webhooks: list[repository.WebhookEvent] = field(default_factory=list)
    matches: list[repository.CommandMatch] = field(default_factory=list)
    deployed: list[tuple[EscrowState, int, str]] = field(default_factory=list)


async def ingest(
    session: AsyncSession,
    items: Sequence[tuple[uuid.UUID, ChainEvent]],
) -> IngestResult:
    """Apply a batch of parsed chain events. Idempotent by (chain id, tx hash, log index).

    Chain order, whatever the delivery order: events of a batch are applied in chain order
    onto the escrow; a new event older (block, log index) than one already recorded for
    its escrow re-folds the escrow from its deployment over all its recorded events in
    chain order (`_refold`), so the same set of events always gives the same escrow.
    """
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

    known = [a for a in by_escrow if a in states]
    latest = await repository.latest_positions(session, known, list(fresh_ids.values()))
    late = [
        a
        for a in known
        if a in latest and min(domain.position(e.ref) for _, e in by_escrow[a]) < latest[a]
    ]
    recorded: dict[str, list[tuple[int, ChainEvent]]] = defaultdict(list)
    current: dict[int, repository.CurrentOutcome] = {}
    if late:
        for chain_event_id, event_type, data in await repository.chain_events_of(session, late):
            event = parse_data(event_type, data)
            recorded[event.escrow].append((chain_event_id, event))
        current = await repository.current_outcomes(
            session, [i for evs in recorded.values() for i, _ in evs]
        )

    writes = _Writes()
    now = datetime.now(UTC)
    fresh = set(fresh_ids.values())
    for address, evs in by_escrow.items():
        if address in recorded:
            _refold(states[address], recorded[address], fresh, current, writes, result, now)
        else:
            _apply_escrow(address, states.get(address), evs, writes, result, now)

    await repository.upsert_escrows(session, list(writes.states.values()), existing=states.keys())
    await repository.clear_approvals(session, writes.cleared)
    await repository.delete_approvals(session, writes.unapproved)
    await repository.insert_approvals(session, writes.approvals)
    # superseded first: a chain event has one current outcome row at a time
    await repository.supersede(session, writes.superseded)
    await repository.insert_history(session, writes.history)
    await repository.insert_anomalies(session, writes.anomalies)
    await repository.park(session, writes.parked)
    await publish_rows(session, writes.outbox)
    await repository.insert_deliveries(session, writes.webhooks)
    outcomes = await repository.confirm_commands(session, writes.matches)
    outcomes += await repository.confirm_creations(session, writes.deployed)
    closed = [s.address for s in writes.states.values() if s.status in domain.TERMINAL]
    failed = await repository.fail_commands_of_closed(session, closed)
    for status in set(outcomes):
        COMMANDS.labels(SERVICE, status).inc(outcomes.count(status))
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
    """Events all newer than what the escrow has seen: applied onto it in chain order."""
    ids = {e.ref.key: i for i, e in events}
    final, outcomes = domain.fold(state, [e for _, e in events])
    status: Status | None = state.status if state is not None else None
    for event, outcome in outcomes:
        chain_event_id = ids[event.ref.key]
        if isinstance(outcome, Park):
            writes.parked.append((chain_event_id, address))
            result.parked += 1
            EVENTS.labels(SERVICE, event.type, "parked").inc()
            continue
        _record(address, chain_event_id, event, outcome, status, writes, result)
        if isinstance(outcome, Applied):
            status = outcome.to_status
            _match(address, chain_event_id, event, outcome, writes)
            if outcome.status_changed:
                result.state_changes += 1
                _state_change(outcome.state, outcome.from_status, event.ref, writes, now)
    if final is None or final is state:
        return
    writes.states[address] = final
    before = set(state.approvers) if state is not None else set()
    after = set(final.approvers)
    writes.unapproved += [(address, a) for a in sorted(before - after)]
    writes.approvals += [r for r in _approval_rows(address, outcomes) if r.approver not in before]


def _refold(
    stored: EscrowState,
    recorded: list[tuple[int, ChainEvent]],
    fresh: set[int],
    current: dict[int, repository.CurrentOutcome],
    writes: _Writes,
    result: IngestResult,
    now: datetime,
) -> None:
    """A late event: fold the escrow again from its deployment over every recorded event
    in chain order. Events whose outcome is unchanged keep their rows; a changed one's row
    is marked superseded (by the late event) and the new outcome appended.

    The deployment is the one already applied: a second deployment stays an anomaly even
    if it is older on chain (another contract's address reuse is not a re-deployment)."""
    address = stored.address
    ids = {e.ref.key: i for i, e in recorded}
    deployment = next(e for _, e in recorded if e.ref.key == stored.deployed.key)
    others = [e for _, e in recorded if not isinstance(e, domain.Deployed)]
    extra_deploys = [
        (i, e) for i, e in recorded if isinstance(e, domain.Deployed) and e is not deployment
    ]
    final, outcomes = domain.fold(None, [deployment, *others])
    assert final is not None
    # the re-fold is attributed to the oldest (on chain) of the new events
    late = min((e for i, e in recorded if i in fresh), key=lambda e: domain.position(e.ref))
    by = ids[late.ref.key]
    status: Status | None = None
    for event, outcome in outcomes:
        chain_event_id = ids[event.ref.key]
        if event is deployment:
            status = "created"
            continue
        before = current.get(chain_event_id)
        if not _same(before, outcome, status):
            if before is not None:
                writes.superseded.append((chain_event_id, by))
            counted = chain_event_id in fresh
            _record(address, chain_event_id, event, outcome, status, writes, result, count=counted)
            if isinstance(outcome, Applied) and (before is None or not before.applied):
                _match(address, chain_event_id, event, outcome, writes)
        if isinstance(outcome, Applied):
            status = outcome.to_status
    for chain_event_id, event in extra_deploys:
        if chain_event_id in fresh:
            outcome = domain.apply(final, event)
            _record(address, chain_event_id, event, outcome, final.status, writes, result)
    writes.states[address] = final
    writes.cleared.append(address)
    writes.approvals += _approval_rows(address, outcomes, only=set(final.approvers))
    if final.status != stored.status:
        result.state_changes += 1
        _state_change(final, stored.status, final.last, writes, now, refold=True)


def _same(
    before: repository.CurrentOutcome | None, outcome: domain.Outcome, status: Status | None
) -> bool:
    """Whether the recorded row already says what the new fold says."""
    if before is None:
        return False
    if isinstance(outcome, Applied):
        details = json.loads(json.dumps(outcome.details))
        return (
            before.applied
            and (before.from_status, before.to_status) == (outcome.from_status, outcome.to_status)
            and before.details == details
        )
    if isinstance(outcome, Anomaly):
        return not before.applied and (before.reason, before.status_at_event) == (
            outcome.reason,
            status,
        )
    return False


def _record(
    address: str,
    chain_event_id: int,
    event: ChainEvent,
    outcome: domain.Outcome,
    status: Status | None,
    writes: _Writes,
    result: IngestResult,
    *,
    count: bool = True,
) -> None:
    """The history row of an applied event, or the anomaly row (with the status it met)."""
    if isinstance(outcome, Anomaly):
        writes.anomalies.append(
            repository.AnomalyRow(
                address,
                chain_event_id,
                event.ref,
                event.type,
                outcome.reason,
                outcome.detail,
                status,
            )
        )
        if count:
            result.anomalies += 1
            EVENTS.labels(SERVICE, event.type, "anomaly").inc()
            ANOMALIES.labels(SERVICE, outcome.reason).inc()
        return
    assert isinstance(outcome, Applied)
    if count:
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


def _match(
    address: str, chain_event_id: int, event: ChainEvent, outcome: Applied, writes: _Writes
) -> None:
    """The command this applied event may confirm."""
    if isinstance(event, domain.Deployed):
        # a creation is confirmed only through the correlation id the signer echoed
        if event.correlation_id is not None:
            writes.deployed.append((outcome.state, chain_event_id, event.correlation_id))
        return
    if event.type not in _ACTION_OF:
        return  # a dispute is the parties' own act: no settlement command sends one
    actor = (
        event.approver
        if isinstance(event, domain.Approved)
        else event.new_arbiter
        if isinstance(event, domain.ArbiterChanged)
        else None
    )
    writes.matches.append(
        repository.CommandMatch(
            address, _ACTION_OF[event.type], actor, chain_event_id, event.correlation_id
        )
    )


def _approval_rows(
    address: str,
    outcomes: list[tuple[ChainEvent, domain.Outcome]],
    only: set[str] | None = None,
) -> list[repository.ApprovalRow]:
    """Rows for the approvals applied in `outcomes` that still count at the end."""
    rows: dict[str, repository.ApprovalRow] = {}
    final_approvers: set[str] = set()
    for event, outcome in outcomes:
        if isinstance(outcome, Applied):
            final_approvers = set(outcome.state.approvers)
            if outcome.approver_role is not None and isinstance(event, domain.Approved):
                rows[event.approver] = repository.ApprovalRow(
                    address, event.approver, outcome.approver_role, event.ref
                )
    keep = final_approvers if only is None else only
    return [r for a, r in rows.items() if a in keep]


def _state_change(
    state: EscrowState,
    from_status: Status | None,
    ref: domain.ChainRef,
    writes: _Writes,
    now: datetime,
    *,
    refold: bool = False,
) -> None:
    data = {
        **escrow_snapshot(state),
        "from_status": from_status,
        "to_status": state.status,
        "block_number": ref.block_number,
        "tx_hash": ref.tx_hash,
        "log_index": ref.log_index,
    }
    if refold:
        # a late event changed the escrow's status in chain order (see docs/settlement.md)
        data["refold"] = True
    envelope = Envelope(
        type=ESCROW_STATE_CHANGED, source=SERVICE, subject=state.address, data=data, time=now
    )
    writes.outbox.append(
        OutboxRow(
            envelope.id, ESCROWS_TOPIC, state.address, ESCROW_STATE_CHANGED, envelope.to_json()
        )
    )
    writes.webhooks.append(
        repository.WebhookEvent(envelope.id, f"escrow.{state.status}", state.address, now, data)
    )


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
    "confirmed_chain_event_id, created_at, submitted_at, resolved_at, updated_at, requested_by"
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
    session: AsyncSession, idempotency_key: str, body: dict[str, Any], *, requested_by: str
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
            "approvals_required, release_delay, approver, new_arbiter, reference, body, status, "
            "requested_by) "
            "VALUES (:id, :key, :hash, :action, :chain_id, :escrow_address, :payer, :payee, "
            ":arbiter, :asset_address, :asset_decimals, :amount, :approvals_required, "
            ":release_delay, :approver, :new_arbiter, :reference, CAST(:body AS jsonb), "
            "'received', :requested_by) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        ),
        {
            "id": command_id,
            "key": idempotency_key,
            "hash": digest,
            "body": json.dumps(body),
            "requested_by": requested_by,
        }
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
            hint = await repository.symbol_like(session, body["chain_id"], body["asset"])
            also = f" (symbols are exact: did you mean {hint!r}?)" if hint else ""
            raise InvalidError(
                f"asset {body['asset']!r} is not a known asset on chain {body['chain_id']}" + also,
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
    if action == "release" and escrow["status"] != "approved":
        raise ConflictError(
            f"escrow {escrow['address']} is not approved (it is {escrow['status']} with "
            f"{escrow['approvals_count']} of {escrow['approvals_required']} approvals): "
            "a release needs the approvals first"
        )
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
        reason = None
        if row["escrow_status"] in domain.TERMINAL:
            reason = f"escrow is {row['escrow_status']} on chain"
        elif row["action"] == "release" and row["escrow_status"] != "approved":
            # approved when accepted, then an arbiter change revoked an approval
            reason = f"escrow is {row['escrow_status']} on chain, not approved"
        if reason is not None:
            await session.execute(
                text(
                    "UPDATE commands SET status = 'failed', failure_reason = :r, "
                    "resolved_at = now(), updated_at = now() WHERE id = :id"
                ),
                {"r": reason, "id": row["id"]},
            )
            COMMANDS.labels(SERVICE, "failed").inc()
            continue
        envelope = await publish(
            session,
            COMMANDS_TOPIC,
            event_type=COMMAND_SUBMITTED,
            subject=_command_subject(row),
            # the signer puts correlation_id into the transaction; the chain event carries
            # it back and only that confirms the command (see confirm_commands/creations)
            data={"command_id": str(row["id"]), "correlation_id": str(row["id"]), **row["body"]},
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


def _command_subject(row: Any) -> str:
    """The ordering key of a command's events: its escrow, or (creation) the command."""
    return str(row["escrow_address"] or row["id"])


async def expire_submitted(session: AsyncSession, timeout: float) -> int:
    """Fail submitted commands that no chain event confirmed within `timeout` seconds and
    tell the signer to drop them (`settlement.command_cancelled`, same ordering key as the
    submission). If it sends one anyway, the chain event makes it `confirmed_late`."""
    expired = (
        await session.execute(
            text(
                "UPDATE commands SET status = 'failed', failure_reason = 'no matching chain "
                "event within ' || CAST(:t AS text) || ' s of submission', resolved_at = now(), "
                "updated_at = now() WHERE id IN (SELECT id FROM commands "
                "WHERE status = 'submitted' AND submitted_at < now() - make_interval(secs => :t) "
                "ORDER BY submitted_at LIMIT 100 FOR UPDATE SKIP LOCKED) "
                "RETURNING id, escrow_address, action, failure_reason"
            ),
            {"t": timeout},
        )
    ).all()
    for row in expired:
        await publish(
            session,
            COMMANDS_TOPIC,
            event_type=COMMAND_CANCELLED,
            subject=_command_subject(row._mapping),
            data={
                "command_id": str(row.id),
                "correlation_id": str(row.id),
                "action": row.action,
                "reason": row.failure_reason,
            },
            source=SERVICE,
        )
    if expired:
        COMMANDS.labels(SERVICE, "failed").inc(len(expired))
    return len(expired)
