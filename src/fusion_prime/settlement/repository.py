"""SQL for the settlement tables. Never commits: the caller owns the transaction.

Ingestion writes are set-based (one statement per table per batch, arrays through
unnest) because per-row round trips are what limits a consumer's throughput.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fusion_prime.settlement import models
from fusion_prime.settlement.domain import ChainEvent, ChainRef, EscrowState

# -- chain events -----------------------------------------------------------------------

_INSERT_CHAIN_EVENTS = text(
    "INSERT INTO chain_events (chain_id, tx_hash, log_index, block_number, event_type, "
    "escrow_address, envelope_id, data, correlation_id) "
    "SELECT * FROM unnest(CAST(:chain_ids AS bigint[]), CAST(:tx_hashes AS text[]), "
    "CAST(:log_indexes AS integer[]), CAST(:blocks AS bigint[]), CAST(:types AS text[]), "
    "CAST(:escrows AS text[]), CAST(:envelope_ids AS uuid[]), CAST(:datas AS jsonb[]), "
    "CAST(:correlations AS uuid[])) "
    "ON CONFLICT ON CONSTRAINT uq_chain_events_key DO NOTHING "
    "RETURNING id, chain_id, tx_hash, log_index"
)


@dataclass(frozen=True)
class NewChainEvent:
    envelope_id: uuid.UUID
    event: ChainEvent
    data_json: str


async def insert_chain_events(
    session: AsyncSession, items: Sequence[NewChainEvent]
) -> dict[tuple[int, str, int], int]:
    """Record events by their chain key; returns key -> id for the ones not seen before."""
    if not items:
        return {}
    rows = await session.execute(
        _INSERT_CHAIN_EVENTS,
        {
            "chain_ids": [i.event.ref.chain_id for i in items],
            "tx_hashes": [i.event.ref.tx_hash for i in items],
            "log_indexes": [i.event.ref.log_index for i in items],
            "blocks": [i.event.ref.block_number for i in items],
            "types": [i.event.type for i in items],
            "escrows": [i.event.escrow for i in items],
            "envelope_ids": [i.envelope_id for i in items],
            "datas": [i.data_json for i in items],
            "correlations": [i.event.correlation_id for i in items],
        },
    )
    return {(r.chain_id, r.tx_hash, r.log_index): r.id for r in rows}


async def latest_positions(
    session: AsyncSession, addresses: Sequence[str], exclude: Sequence[int]
) -> dict[str, tuple[int, int]]:
    """The latest chain position (block, log index) of the events already recorded for
    each escrow, leaving out `exclude` (this batch's own new events)."""
    if not addresses:
        return {}
    rows = await session.execute(
        text(
            "SELECT DISTINCT ON (escrow_address) escrow_address, block_number, log_index "
            "FROM chain_events WHERE escrow_address = ANY(CAST(:addrs AS text[])) "
            "AND NOT (id = ANY(CAST(:ex AS bigint[]))) "
            "ORDER BY escrow_address, block_number DESC, log_index DESC"
        ),
        {"addrs": list(addresses), "ex": list(exclude)},
    )
    return {r.escrow_address: (r.block_number, r.log_index) for r in rows}


async def chain_events_of(
    session: AsyncSession, addresses: Sequence[str]
) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, type, data) of every recorded chain event of these escrows, in chain order."""
    rows = await session.execute(
        text(
            "SELECT id, event_type, data FROM chain_events "
            "WHERE escrow_address = ANY(CAST(:addrs AS text[])) "
            "ORDER BY escrow_address, block_number, log_index, id"
        ),
        {"addrs": list(addresses)},
    )
    return [(r.id, r.event_type, r.data) for r in rows]


@dataclass(frozen=True)
class CurrentOutcome:
    """The current (not superseded) recorded outcome of one chain event."""

    applied: bool
    from_status: str | None = None
    to_status: str | None = None
    details: dict[str, Any] | None = None
    reason: str | None = None
    status_at_event: str | None = None


async def current_outcomes(
    session: AsyncSession, chain_event_ids: Sequence[int]
) -> dict[int, CurrentOutcome]:
    if not chain_event_ids:
        return {}
    rows = await session.execute(
        text(
            "SELECT chain_event_id, true AS applied, from_status, to_status, details, "
            "NULL AS reason, NULL AS status_at_event FROM escrow_history "
            "WHERE chain_event_id = ANY(CAST(:ids AS bigint[])) AND superseded_at IS NULL "
            "UNION ALL SELECT chain_event_id, false, NULL, NULL, NULL, reason, status_at_event "
            "FROM escrow_anomalies "
            "WHERE chain_event_id = ANY(CAST(:ids AS bigint[])) AND superseded_at IS NULL"
        ),
        {"ids": list(chain_event_ids)},
    )
    return {
        r.chain_event_id: CurrentOutcome(
            r.applied, r.from_status, r.to_status, r.details, r.reason, r.status_at_event
        )
        for r in rows
    }


async def supersede(session: AsyncSession, superseded: Sequence[tuple[int, int]]) -> None:
    """Mark the current outcome rows of (chain event id, re-folding event id) superseded."""
    if not superseded:
        return
    for table in ("escrow_history", "escrow_anomalies"):
        await session.execute(
            text(
                f"UPDATE {table} t SET superseded_at = now(), superseded_by = s.by "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:bys AS bigint[])) AS s(id, by) "
                "WHERE t.chain_event_id = s.id AND t.superseded_at IS NULL"
            ),
            {"ids": [i for i, _ in superseded], "bys": [b for _, b in superseded]},
        )


async def delete_approvals(session: AsyncSession, pairs: Sequence[tuple[str, str]]) -> None:
    """Approvals that no longer count (escrow, approver): revoked or re-folded away."""
    if not pairs:
        return
    await session.execute(
        text(
            "DELETE FROM escrow_approvals p USING unnest(CAST(:e AS text[]), "
            "CAST(:a AS text[])) AS x(escrow, approver) "
            "WHERE p.escrow_address = x.escrow AND p.approver = x.approver"
        ),
        {"e": [p[0] for p in pairs], "a": [p[1] for p in pairs]},
    )


async def clear_approvals(session: AsyncSession, addresses: Sequence[str]) -> None:
    if addresses:
        await session.execute(
            text("DELETE FROM escrow_approvals WHERE escrow_address = ANY(CAST(:a AS text[]))"),
            {"a": list(addresses)},
        )


async def lock_escrows(session: AsyncSession, addresses: Sequence[str]) -> None:
    """Serialise concurrent batches per escrow address (also for not-yet-deployed ones, so a
    parked event and its deployment cannot pass each other in two transactions)."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(a, 7) AS k "
            "FROM unnest(CAST(:addrs AS text[])) AS a ORDER BY k) AS keys"
        ),
        {"addrs": list(addresses)},
    )


_LOAD_STATES = text(
    "SELECT e.address, e.chain_id, e.payer, e.payee, e.arbiter, e.asset_address, "
    "e.asset_decimals, e.amount, e.release_delay, e.approvals_required, e.status, "
    "e.deployed_block, e.deployed_log_index, e.deployed_tx_hash, e.last_block, "
    "e.last_log_index, e.last_tx_hash, "
    "coalesce(array_agg(p.approver ORDER BY p.block_number, p.log_index) "
    "FILTER (WHERE p.approver IS NOT NULL), '{}') AS approvers "
    "FROM escrows e LEFT JOIN escrow_approvals p ON p.escrow_address = e.address "
    "WHERE e.address = ANY(CAST(:addrs AS text[])) GROUP BY e.address"
)


async def load_states(session: AsyncSession, addresses: Sequence[str]) -> dict[str, EscrowState]:
    rows = await session.execute(_LOAD_STATES, {"addrs": list(addresses)})
    states: dict[str, EscrowState] = {}
    # unpacked positionally (in _LOAD_STATES order): by-name Row lookups were most of the
    # cost of this loop over a backfill batch's escrows
    for (
        address,
        chain_id,
        payer,
        payee,
        arbiter,
        asset,
        decimals,
        amount,
        release_delay,
        approvals_required,
        status,
        deployed_block,
        deployed_log_index,
        deployed_tx_hash,
        last_block,
        last_log_index,
        last_tx_hash,
        approvers,
    ) in rows:
        states[address] = EscrowState(
            address=address,
            chain_id=chain_id,
            payer=payer,
            payee=payee,
            arbiter=arbiter,
            asset=asset,
            decimals=decimals,
            amount=int(amount),
            release_delay=release_delay,
            approvals_required=approvals_required,
            status=status,
            approvers=tuple(approvers),
            deployed=ChainRef(deployed_block, deployed_log_index, chain_id, deployed_tx_hash),
            last=ChainRef(last_block, last_log_index, chain_id, last_tx_hash),
        )
    return states


async def take_parked(
    session: AsyncSession, addresses: Sequence[str]
) -> list[tuple[int, str, dict[str, Any]]]:
    """Remove and return (chain event id, type, data) of events parked for these escrows."""
    if not addresses:
        return []
    rows = await session.execute(
        text(
            "WITH taken AS (DELETE FROM parked_events WHERE escrow_address = "
            "ANY(CAST(:addrs AS text[])) RETURNING chain_event_id) "
            "SELECT c.id, c.event_type, c.data FROM taken JOIN chain_events c "
            "ON c.id = taken.chain_event_id"
        ),
        {"addrs": list(addresses)},
    )
    return [(r.id, r.event_type, r.data) for r in rows]


async def park(session: AsyncSession, parked: Sequence[tuple[int, str]]) -> None:
    if not parked:
        return
    await session.execute(
        text(
            "INSERT INTO parked_events (chain_event_id, escrow_address) "
            "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:addrs AS text[]))"
        ),
        {"ids": [p[0] for p in parked], "addrs": [p[1] for p in parked]},
    )


_UPDATE_ESCROWS = text(
    "UPDATE escrows e SET arbiter = u.arbiter, status = u.status, "
    "approvals_count = u.approvals_count, last_block = u.last_block, "
    "last_log_index = u.last_log_index, last_tx_hash = u.last_tx_hash, updated_at = now() "
    "FROM unnest(CAST(:address AS text[]), CAST(:arbiter AS text[]), CAST(:status AS text[]), "
    "CAST(:count AS smallint[]), CAST(:lblock AS bigint[]), CAST(:llog AS integer[]), "
    "CAST(:ltx AS text[])) AS u(address, arbiter, status, approvals_count, last_block, "
    "last_log_index, last_tx_hash) WHERE e.address = u.address"
)


async def upsert_escrows(
    session: AsyncSession, states: Sequence[EscrowState], existing: Collection[str] = ()
) -> None:
    """Write the escrows' new states. `existing`: addresses known to have a row (loaded
    under their advisory lock in this transaction, and escrows are never deleted): those
    are a plain UPDATE of the columns an event can change, the others an upsert. The
    UPDATE is the upsert's conflict branch without its insert half (no proposed row
    checked against every constraint, no speculative tuple lock)."""
    if not states:
        return
    known = [s for s in states if s.address in existing]
    if known:
        updated = await session.execute(
            _UPDATE_ESCROWS,
            {
                "address": [s.address for s in known],
                "arbiter": [s.arbiter for s in known],
                "status": [s.status for s in known],
                "count": [len(s.approvers) for s in known],
                "lblock": [s.last.block_number for s in known],
                "llog": [s.last.log_index for s in known],
                "ltx": [s.last.tx_hash for s in known],
            },
        )
        if updated.rowcount != len(known):  # type: ignore[attr-defined]
            raise RuntimeError(
                f"{len(known)} escrows were loaded in this transaction, {updated.rowcount} updated"  # type: ignore[attr-defined]
            )
        if len(known) == len(states):
            return
        states = [s for s in states if s.address not in existing]
    await session.execute(
        text(
            "INSERT INTO escrows (address, chain_id, payer, payee, arbiter, asset_address, "
            "asset_decimals, amount, release_delay, approvals_required, approvals_count, status, "
            "deployed_block, deployed_tx_hash, deployed_log_index, last_block, last_log_index, "
            "last_tx_hash) "
            "SELECT * FROM unnest(CAST(:address AS text[]), CAST(:chain_id AS bigint[]), "
            "CAST(:payer AS text[]), CAST(:payee AS text[]), CAST(:arbiter AS text[]), "
            "CAST(:asset AS text[]), CAST(:decimals AS smallint[]), CAST(:amount AS numeric[]), "
            "CAST(:release_delay AS bigint[]), CAST(:required AS smallint[]), "
            "CAST(:count AS smallint[]), CAST(:status AS text[]), CAST(:dblock AS bigint[]), "
            "CAST(:dtx AS text[]), CAST(:dlog AS integer[]), CAST(:lblock AS bigint[]), "
            "CAST(:llog AS integer[]), CAST(:ltx AS text[])) "
            "ON CONFLICT (address) DO UPDATE SET arbiter = excluded.arbiter, "
            "status = excluded.status, approvals_count = excluded.approvals_count, "
            "last_block = excluded.last_block, last_log_index = excluded.last_log_index, "
            "last_tx_hash = excluded.last_tx_hash, updated_at = now()"
        ),
        {
            "address": [s.address for s in states],
            "chain_id": [s.chain_id for s in states],
            "payer": [s.payer for s in states],
            "payee": [s.payee for s in states],
            "arbiter": [s.arbiter for s in states],
            "asset": [s.asset for s in states],
            "decimals": [s.decimals for s in states],
            "amount": [Decimal(s.amount) for s in states],
            "release_delay": [s.release_delay for s in states],
            "required": [s.approvals_required for s in states],
            "count": [len(s.approvers) for s in states],
            "status": [s.status for s in states],
            "dblock": [s.deployed.block_number for s in states],
            "dtx": [s.deployed.tx_hash for s in states],
            "dlog": [s.deployed.log_index for s in states],
            "lblock": [s.last.block_number for s in states],
            "llog": [s.last.log_index for s in states],
            "ltx": [s.last.tx_hash for s in states],
        },
    )


@dataclass(frozen=True)
class ApprovalRow:
    escrow: str
    approver: str
    role: str
    ref: ChainRef


async def insert_approvals(session: AsyncSession, rows: Sequence[ApprovalRow]) -> None:
    if not rows:
        return
    await session.execute(
        text(
            "INSERT INTO escrow_approvals (escrow_address, approver, role, block_number, "
            "tx_hash, log_index) SELECT * FROM unnest(CAST(:e AS text[]), CAST(:a AS text[]), "
            "CAST(:r AS text[]), CAST(:b AS bigint[]), CAST(:t AS text[]), "
            "CAST(:l AS integer[]))"
        ),
        {
            "e": [r.escrow for r in rows],
            "a": [r.approver for r in rows],
            "r": [r.role for r in rows],
            "b": [r.ref.block_number for r in rows],
            "t": [r.ref.tx_hash for r in rows],
            "l": [r.ref.log_index for r in rows],
        },
    )


@dataclass(frozen=True)
class HistoryRow:
    escrow: str
    chain_event_id: int
    ref: ChainRef
    event_type: str
    from_status: str | None
    to_status: str
    details_json: str


async def insert_history(session: AsyncSession, rows: Sequence[HistoryRow]) -> None:
    if not rows:
        return
    await session.execute(
        text(
            "INSERT INTO escrow_history (escrow_address, chain_event_id, chain_id, tx_hash, "
            "log_index, block_number, event_type, from_status, to_status, details) "
            "SELECT * FROM unnest(CAST(:e AS text[]), CAST(:ce AS bigint[]), "
            "CAST(:c AS bigint[]), CAST(:t AS text[]), CAST(:l AS integer[]), "
            "CAST(:b AS bigint[]), CAST(:ty AS text[]), CAST(:f AS text[]), "
            "CAST(:to AS text[]), CAST(:d AS jsonb[]))"
        ),
        {
            "e": [r.escrow for r in rows],
            "ce": [r.chain_event_id for r in rows],
            "c": [r.ref.chain_id for r in rows],
            "t": [r.ref.tx_hash for r in rows],
            "l": [r.ref.log_index for r in rows],
            "b": [r.ref.block_number for r in rows],
            "ty": [r.event_type for r in rows],
            "f": [r.from_status for r in rows],
            "to": [r.to_status for r in rows],
            "d": [r.details_json for r in rows],
        },
    )


@dataclass(frozen=True)
class AnomalyRow:
    escrow: str
    chain_event_id: int
    ref: ChainRef
    event_type: str
    reason: str
    detail: str
    status_at_event: str | None


async def insert_anomalies(session: AsyncSession, rows: Sequence[AnomalyRow]) -> None:
    if not rows:
        return
    await session.execute(
        text(
            "INSERT INTO escrow_anomalies (escrow_address, chain_event_id, chain_id, tx_hash, "
            "log_index, block_number, event_type, reason, detail, status_at_event) "
            "SELECT * FROM unnest(CAST(:e AS text[]), CAST(:ce AS bigint[]), "
            "CAST(:c AS bigint[]), CAST(:t AS text[]), CAST(:l AS integer[]), "
            "CAST(:b AS bigint[]), CAST(:ty AS text[]), CAST(:r AS text[]), "
            "CAST(:d AS text[]), CAST(:s AS text[]))"
        ),
        {
            "e": [r.escrow for r in rows],
            "ce": [r.chain_event_id for r in rows],
            "c": [r.ref.chain_id for r in rows],
            "t": [r.ref.tx_hash for r in rows],
            "l": [r.ref.log_index for r in rows],
            "b": [r.ref.block_number for r in rows],
            "ty": [r.event_type for r in rows],
            "r": [r.reason for r in rows],
            "d": [r.detail for r in rows],
            "s": [r.status_at_event for r in rows],
        },
    )


# -- outbox and webhook deliveries (same transaction as the state change) ----------------


@dataclass(frozen=True)
class WebhookEvent:
    """A state change as webhook endpoints receive it; the body is rendered only when an
    enabled endpoint subscribes to the type (in a backfill, mostly none does)."""

    event_id: uuid.UUID
    event_type: str
    escrow: str
    created_at: datetime
    data: dict[str, Any]

    @property
    def body(self) -> str:
        return json.dumps(
            {
                "id": str(self.event_id),
                "type": self.event_type,
                "created_at": self.created_at.isoformat(),
                "data": self.data,
            },
            separators=(",", ":"),
        )


async def insert_deliveries(session: AsyncSession, events: Sequence[WebhookEvent]) -> None:
    """One delivery per (enabled endpoint subscribed to the type, event), due at once."""
    if not events:
        return
    wanted = set(
        (
            await session.execute(
                text(
                    "SELECT DISTINCT t FROM webhook_endpoints w, unnest(w.event_types) AS t "
                    "WHERE w.enabled"
                )
            )
        ).scalars()
    )
    events = [e for e in events if e.event_type in wanted]
    if not events:
        return
    await session.execute(
        text(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, "
            "escrow_address, body, status, next_attempt_at) "
            "SELECT gen_random_uuid(), w.id, ev.event_id, ev.event_type, ev.escrow, ev.body, "
            "'pending', now() "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:escrows AS text[]), "
            "CAST(:bodies AS text[])) AS ev(event_id, event_type, escrow, body) "
            "JOIN webhook_endpoints w ON w.enabled AND ev.event_type = ANY(w.event_types)"
        ),
        {
            "ids": [e.event_id for e in events],
            "types": [e.event_type for e in events],
            "escrows": [e.escrow for e in events],
            "bodies": [e.body for e in events],
        },
    )


# -- commands matched by chain events -------------------------------------------------


@dataclass(frozen=True)
class CommandMatch:
    escrow: str
    action: str
    actor: str | None
    chain_event_id: int
    correlation_id: str | None


# A command is confirmed by the chain event that carries its correlation id (also when it
# had failed: then 'confirmed_late'), or, for the escrow actions only, by the matching
# event (same escrow, action and approver / new arbiter) when the event carries none.
_STATUS_ON_CONFIRM = (
    "status = CASE WHEN c.status = 'failed' THEN 'confirmed_late' ELSE 'confirmed' END"
)


async def confirm_commands(session: AsyncSession, matches: Sequence[CommandMatch]) -> list[str]:
    """Returns the new status of every command confirmed."""
    if not matches:
        return []
    result = await session.execute(
        text(
            "WITH ev AS (SELECT * FROM unnest(CAST(:escrows AS text[]), "
            "CAST(:actions AS text[]), CAST(:actors AS text[]), CAST(:ids AS bigint[]), "
            "CAST(:corrs AS uuid[])) AS ev(escrow, action, actor, chain_event_id, corr)), "
            "m AS (SELECT DISTINCT ON (ev.chain_event_id) ev.chain_event_id, c.id "
            "FROM ev JOIN commands c ON c.escrow_address = ev.escrow AND c.action = ev.action "
            "AND CASE c.action WHEN 'approve' THEN c.approver = ev.actor "
            "WHEN 'change_arbiter' THEN c.new_arbiter = ev.actor ELSE true END "
            "AND CASE WHEN ev.corr IS NOT NULL THEN c.id = ev.corr "
            "AND c.status IN ('received', 'submitted', 'failed') "
            "ELSE c.status IN ('received', 'submitted') END "
            "ORDER BY ev.chain_event_id, c.created_at, c.id) "
            f"UPDATE commands c SET {_STATUS_ON_CONFIRM}, "
            "confirmed_chain_event_id = m.chain_event_id, resolved_at = now(), "
            "updated_at = now() FROM m WHERE c.id = m.id RETURNING c.status"
        ),
        {
            "escrows": [m.escrow for m in matches],
            "actions": [m.action for m in matches],
            "actors": [m.actor for m in matches],
            "ids": [m.chain_event_id for m in matches],
            "corrs": [m.correlation_id for m in matches],
        },
    )
    return [r.status for r in result]


async def confirm_creations(
    session: AsyncSession, deployed: Sequence[tuple[EscrowState, int, str]]
) -> list[str]:
    """A deployment confirms the create_escrow command whose correlation id it carries
    (and whose terms it has); never a command picked by its terms alone."""
    if not deployed:
        return []
    result = await session.execute(
        text(
            "WITH d AS (SELECT * FROM unnest(CAST(:addrs AS text[]), CAST(:chains AS bigint[]), "
            "CAST(:payers AS text[]), CAST(:payees AS text[]), CAST(:arbiters AS text[]), "
            "CAST(:assets AS text[]), CAST(:amounts AS numeric[]), CAST(:reqs AS smallint[]), "
            "CAST(:delays AS bigint[]), CAST(:ids AS bigint[]), CAST(:corrs AS uuid[])) "
            "AS d(address, chain_id, payer, payee, arbiter, asset, amount, req, delay, "
            "chain_event_id, corr)) "
            f"UPDATE commands c SET {_STATUS_ON_CONFIRM}, escrow_address = d.address, "
            "confirmed_chain_event_id = d.chain_event_id, resolved_at = now(), "
            "updated_at = now() FROM d WHERE c.id = d.corr AND c.action = 'create_escrow' "
            "AND c.status IN ('received', 'submitted', 'failed') AND c.chain_id = d.chain_id "
            "AND c.payer = d.payer AND c.payee = d.payee AND c.arbiter = d.arbiter "
            "AND c.asset_address = d.asset AND c.amount = d.amount "
            "AND c.approvals_required = d.req AND c.release_delay = d.delay "
            "RETURNING c.status"
        ),
        {
            "addrs": [s.address for s, _, _ in deployed],
            "chains": [s.chain_id for s, _, _ in deployed],
            "payers": [s.payer for s, _, _ in deployed],
            "payees": [s.payee for s, _, _ in deployed],
            "arbiters": [s.arbiter for s, _, _ in deployed],
            "assets": [s.asset for s, _, _ in deployed],
            "amounts": [Decimal(s.amount) for s, _, _ in deployed],
            "reqs": [s.approvals_required for s, _, _ in deployed],
            "delays": [s.release_delay for s, _, _ in deployed],
            "ids": [i for _, i, _ in deployed],
            "corrs": [c for _, _, c in deployed],
        },
    )
    return [r.status for r in result]


async def fail_commands_of_closed(session: AsyncSession, addresses: Sequence[str]) -> int:
    """Pending commands on an escrow that reached a terminal state can never happen now."""
    if not addresses:
        return 0
    result = await session.execute(
        text(
            "UPDATE commands c SET status = 'failed', "
            "failure_reason = 'escrow is ' || e.status || ' on chain', resolved_at = now(), "
            "updated_at = now() FROM escrows e WHERE e.address = c.escrow_address "
            "AND c.escrow_address = ANY(CAST(:addrs AS text[])) "
            "AND c.status IN ('received', 'submitted') AND e.status IN ('released', 'refunded')"
        ),
        {"addrs": list(addresses)},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- queries ----------------------------------------------------------------------------

ESCROW_COLUMNS = (
    "e.seq, e.address, e.chain_id, e.payer, e.payee, e.arbiter, e.asset_address, "
    "e.asset_decimals, a.symbol AS asset_symbol, e.amount, e.release_delay, "
    "e.approvals_required, e.approvals_count, e.status, e.deployed_block, e.deployed_tx_hash, "
    "e.deployed_log_index, e.last_block, e.last_log_index, e.created_at, e.updated_at"
)
_ESCROW_FROM = (
    "FROM escrows e LEFT JOIN assets a ON a.chain_id = e.chain_id AND a.address = e.asset_address"
)

GET_ESCROW_SQL = (
    f"SELECT {ESCROW_COLUMNS}, coalesce((SELECT json_agg(json_build_object("
    "'approver', p.approver, 'role', p.role, 'block_number', p.block_number, "
    "'tx_hash', p.tx_hash, 'log_index', p.log_index) ORDER BY p.block_number, p.log_index) "
    "FROM escrow_approvals p WHERE p.escrow_address = e.address), '[]') AS approvals "
    f"{_ESCROW_FROM} WHERE e.address = $1"
)
_GET_ESCROW = text(GET_ESCROW_SQL.replace("$1", ":address"))


async def get_escrow_fast(pool: Any, address: str) -> dict[str, Any] | None:
    """The same read on a plain asyncpg pool: the hot path of `GET /escrows/{address}`,
    where SQLAlchemy's per-statement overhead is several times the query itself."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(GET_ESCROW_SQL, address)
    if row is None:
        return None
    out = dict(row)
    out["approvals"] = json.loads(out["approvals"])
    return out


async def get_escrow(
    session: AsyncSession | AsyncConnection, address: str
) -> dict[str, Any] | None:
    row = (await session.execute(_GET_ESCROW, {"address": address})).mappings().first()
    return dict(row) if row is not None else None


async def list_escrows(
    session: AsyncSession,
    *,
    payer: str | None,
    payee: str | None,
    status: str | None,
    chain_id: int | None,
    after_seq: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Keyset pagination on seq: stable under concurrent inserts, no OFFSET scans."""
    e, a = models.escrows, models.assets
    query = (
        sa.select(
            *(c for c in e.c if c.name != "last_tx_hash"),
            a.c.symbol.label("asset_symbol"),
        )
        .select_from(
            e.outerjoin(a, sa.and_(a.c.chain_id == e.c.chain_id, a.c.address == e.c.asset_address))
        )
        .order_by(e.c.seq)
        .limit(limit)
    )
    for column, value in (
        (e.c.payer, payer),
        (e.c.payee, payee),
        (e.c.status, status),
        (e.c.chain_id, chain_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if after_seq is not None:
        query = query.where(e.c.seq > after_seq)
    rows = await session.execute(query)
    return [dict(r) for r in rows.mappings()]


async def escrow_exists(session: AsyncSession, address: str) -> bool:
    found = await session.execute(text("SELECT 1 FROM escrows WHERE address = :a"), {"a": address})
    return found.first() is not None


def _current_only(include_superseded: bool) -> str:
    return "" if include_superseded else " AND superseded_at IS NULL"


async def history(
    session: AsyncSession, address: str, *, include_superseded: bool = False
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT id, chain_id, tx_hash, log_index, block_number, event_type, from_status, "
            "to_status, details, recorded_at, superseded_at FROM escrow_history "
            f"WHERE escrow_address = :a{_current_only(include_superseded)} "
            "ORDER BY block_number, log_index, id"
        ),
        {"a": address},
    )
    return [dict(r) for r in rows.mappings()]


async def anomalies(
    session: AsyncSession, address: str, *, include_superseded: bool = False
) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT id, chain_id, tx_hash, log_index, block_number, event_type, reason, detail, "
            "status_at_event, recorded_at, superseded_at FROM escrow_anomalies "
            f"WHERE escrow_address = :a{_current_only(include_superseded)} "
            "ORDER BY block_number, log_index, id"
        ),
        {"a": address},
    )
    return [dict(r) for r in rows.mappings()]


# -- assets -----------------------------------------------------------------------------


async def find_asset(session: AsyncSession, chain_id: int, asset: str) -> dict[str, Any] | None:
    """An asset by address (any case: addresses are case-insensitive hex) or by its exact
    symbol on a chain. At most one row can match: symbols are unique per chain whatever
    their case, and a symbol cannot look like an address."""
    row = (
        (
            await session.execute(
                text(
                    "SELECT chain_id, address, symbol, decimals FROM assets WHERE chain_id = :c "
                    "AND (address = lower(:a) OR symbol = :a)"
                ),
                {"c": chain_id, "a": asset},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


async def symbol_like(session: AsyncSession, chain_id: int, symbol: str) -> str | None:
    """The stored spelling of a symbol that matches `symbol` except for case (a hint)."""
    found = await session.execute(
        text("SELECT symbol FROM assets WHERE chain_id = :c AND upper(symbol) = upper(:s)"),
        {"c": chain_id, "s": symbol},
    )
    return found.scalar()


async def list_assets(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT chain_id, address, symbol, decimals, created_at FROM assets "
            "ORDER BY chain_id, symbol"
        )
    )
    return [dict(r) for r in rows.mappings()]


async def insert_asset(
    session: AsyncSession, chain_id: int, address: str, symbol: str, decimals: int
) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    "INSERT INTO assets (chain_id, address, symbol, decimals) "
                    "VALUES (:c, :a, :s, :d) ON CONFLICT DO NOTHING "
                    "RETURNING chain_id, address, symbol, decimals, created_at"
                ),
                {"c": chain_id, "a": address, "s": symbol, "d": decimals},
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None
