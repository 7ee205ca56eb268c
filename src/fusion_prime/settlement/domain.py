"""The escrow state machine: pure rules, no I/O.

created -> approved (distinct approvals reach the requirement) -> released | refunded,
and created -> refunded. The payer or payee may dispute an open (created or approved)
escrow: disputed -> released | refunded (the arbiter decides; on chain only the arbiter
may release a disputed escrow); no approval or arbiter change applies while disputed.
Only the payer, the payee or the (current) arbiter may approve,
each once; an arbiter change revokes the replaced arbiter's approval (unless that address
is still the payer or payee), which can take an approved escrow back to created. Nothing
is applied after a terminal state. An event that breaks a rule is not
applied: it becomes an `Anomaly` with a machine-readable reason, because on-chain facts
that contradict what we know must be surfaced, not silently dropped or forced through.
An event for an escrow not deployed yet is `Park`ed until the deployment arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

Status = Literal["created", "approved", "disputed", "released", "refunded"]
STATUSES: tuple[Status, ...] = ("created", "approved", "disputed", "released", "refunded")
TERMINAL: frozenset[str] = frozenset({"released", "refunded"})
Role = Literal["payer", "payee", "arbiter"]

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
TX_HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
MAX_UINT256 = 2**256 - 1

DEPLOYED = "escrow.deployed"
APPROVED = "escrow.approved"
RELEASED = "escrow.released"
REFUNDED = "escrow.refunded"
ARBITER_CHANGED = "escrow.arbiter_changed"
DISPUTED = "escrow.disputed"
EVENT_TYPES = (DEPLOYED, APPROVED, RELEASED, REFUNDED, ARBITER_CHANGED, DISPUTED)


def normalise_address(value: str) -> str:
    """0x + 40 hex digits, stored lowercase so the same account always compares equal."""
    if not isinstance(value, str) or not ADDRESS_RE.match(value):
        raise ValueError("must be an address: 0x followed by 40 hexadecimal digits")
    return value.lower()


def normalise_tx_hash(value: str) -> str:
    if not isinstance(value, str) or not TX_HASH_RE.match(value):
        raise ValueError("must be a transaction hash: 0x followed by 64 hexadecimal digits")
    return value.lower()


def parse_base_units(value: object) -> int:
    """A token amount in integer base units: an int or a string of digits, never a float.

    Floats are refused even when integral, because a JSON float already lost precision
    for large amounts before we see it.
    """
    if isinstance(value, bool):
        raise ValueError("must be an integer amount in base units")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        amount = int(value)
    elif isinstance(value, str) and value.startswith("-") and value[1:].isdigit():
        raise ValueError("must not be negative")
    else:
        raise ValueError('must be a non-negative integer in base units (e.g. "1000000")')
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_UINT256:
        raise ValueError("must fit in uint256")
    return amount


@dataclass(frozen=True, order=True)
class ChainRef:
    """Where an event happened on chain; ordering is chain order (block, log index)."""

    block_number: int
    log_index: int
    chain_id: int
    tx_hash: str

    @property
    def key(self) -> tuple[int, str, int]:
        """The idempotency key of a chain event."""
        return (self.chain_id, self.tx_hash, self.log_index)


@dataclass(frozen=True)
class Deployed:
    ref: ChainRef
    escrow: str
    payer: str
    payee: str
    arbiter: str
    asset: str
    decimals: int
    amount: int
    release_delay: int
    approvals_required: int
    type: str = DEPLOYED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


@dataclass(frozen=True)
class Approved:
    ref: ChainRef
    escrow: str
    approver: str
    type: str = APPROVED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


@dataclass(frozen=True)
class Released:
    ref: ChainRef
    escrow: str
    type: str = RELEASED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


@dataclass(frozen=True)
class Refunded:
    ref: ChainRef
    escrow: str
    type: str = REFUNDED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


@dataclass(frozen=True)
class ArbiterChanged:
    ref: ChainRef
    escrow: str
    new_arbiter: str
    type: str = ARBITER_CHANGED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


@dataclass(frozen=True)
class Disputed:
    ref: ChainRef
    escrow: str
    by: str  # the payer or the payee
    type: str = DISPUTED
    # the command id the signer echoed (None: not sent through our commands)
    correlation_id: str | None = None


ChainEvent = Deployed | Approved | Released | Refunded | ArbiterChanged | Disputed


@dataclass(frozen=True)
class EscrowState:
    address: str
    chain_id: int
    payer: str
    payee: str
    arbiter: str
    asset: str
    decimals: int
    amount: int
    release_delay: int
    approvals_required: int
    status: Status
    approvers: tuple[str, ...]  # in approval order, each once
    deployed: ChainRef
    last: ChainRef

    def role_of(self, account: str) -> Role | None:
        if account == self.payer:
            return "payer"
        if account == self.payee:
            return "payee"
        if account == self.arbiter:
            return "arbiter"
        return None


@dataclass(frozen=True)
class Applied:
    state: EscrowState
    from_status: Status | None
    to_status: Status
    details: dict[str, str | int]
    approver_role: Role | None = None
    revoked: tuple[str, ...] = ()  # approvals that no longer count (arbiter replaced)

    @property
    def status_changed(self) -> bool:
        return self.from_status != self.to_status


@dataclass(frozen=True)
class Anomaly:
    reason: str
    detail: str


@dataclass(frozen=True)
class Park:
    pass


PARK = Park()
Outcome = Applied | Anomaly | Park


def apply(state: EscrowState | None, event: ChainEvent) -> Outcome:
    """The next state for one event, or why it cannot be applied."""
    if state is None:
        if isinstance(event, Deployed):
            return _deploy(event)
        return PARK
    if isinstance(event, Deployed):
        return Anomaly(
            "duplicate_deployment",
            f"escrow {state.address} was already deployed at block {state.deployed.block_number}",
        )
    if event.ref.chain_id != state.chain_id:
        return Anomaly(
            "chain_mismatch",
            f"event on chain {event.ref.chain_id} for an escrow on chain {state.chain_id}",
        )
    if state.status in TERMINAL:
        return Anomaly(
            "after_terminal", f"{event.type} after the escrow was already {state.status}"
        )
    if isinstance(event, Disputed):
        return _dispute(state, event)
    if state.status == "disputed" and isinstance(event, Approved | ArbiterChanged):
        return Anomaly(
            "while_disputed", f"{event.type} while the escrow is disputed (the arbiter decides)"
        )
    if isinstance(event, Approved):
        return _approve(state, event)
    if isinstance(event, Released):
        if state.status == "disputed":
            return _move(state, event, "released", {"dispute": "resolved for the payee"})
        if state.status != "approved":
            return Anomaly(
                "release_without_approval",
                f"release while {state.status} with {len(state.approvers)} of "
                f"{state.approvals_required} approvals",
            )
        return _move(state, event, "released", {})
    if isinstance(event, Refunded):
        details: dict[str, str | int] = (
            {"dispute": "resolved for the payer"} if state.status == "disputed" else {}
        )
        return _move(state, event, "refunded", details)
    return _change_arbiter(state, event)


def _dispute(state: EscrowState, event: Disputed) -> Outcome:
    role = state.role_of(event.by)
    if state.status == "disputed":
        return Anomaly("already_disputed", f"{event.by} disputed an escrow already disputed")
    if role not in ("payer", "payee"):
        return Anomaly("disputer_not_allowed", f"{event.by} is not the payer or the payee")
    return _move(state, event, "disputed", {"disputed_by": event.by, "role": role})


def _change_arbiter(state: EscrowState, event: ArbiterChanged) -> Applied:
    """The replaced arbiter's approval stops counting: an approval is a party's consent,
    and that address is no longer a party (unless it is also the payer or payee)."""
    parties = {state.payer, state.payee, event.new_arbiter}
    kept = tuple(a for a in state.approvers if a in parties)
    revoked = tuple(a for a in state.approvers if a not in parties)
    to: Status = "approved" if len(kept) >= state.approvals_required else "created"
    details: dict[str, str | int] = {"old_arbiter": state.arbiter, "new_arbiter": event.new_arbiter}
    if revoked:
        details["revoked_approval"] = revoked[0]  # at most one: the old arbiter's
        details["approvals"] = len(kept)
    return Applied(
        replace(state, arbiter=event.new_arbiter, approvers=kept, status=to, last=event.ref),
        state.status,
        to,
        details,
        revoked=revoked,
    )


def _deploy(event: Deployed) -> Applied:
    state = EscrowState(
        address=event.escrow,
        chain_id=event.ref.chain_id,
        payer=event.payer,
        payee=event.payee,
        arbiter=event.arbiter,
        asset=event.asset,
        decimals=event.decimals,
        amount=event.amount,
        release_delay=event.release_delay,
        approvals_required=event.approvals_required,
        status="created",
        approvers=(),
        deployed=event.ref,
        last=event.ref,
    )
    details: dict[str, str | int] = {
        "payer": event.payer,
        "payee": event.payee,
        "arbiter": event.arbiter,
        "asset": event.asset,
        "decimals": event.decimals,
        "amount": str(event.amount),
        "release_delay": event.release_delay,
        "approvals_required": event.approvals_required,
    }
    return Applied(state, None, "created", details)


def _approve(state: EscrowState, event: Approved) -> Outcome:
    role = state.role_of(event.approver)
    if role is None:
        return Anomaly(
            "approver_not_allowed",
            f"{event.approver} is not the payer, payee or arbiter of the escrow",
        )
    if event.approver in state.approvers:
        return Anomaly("duplicate_approval", f"{event.approver} has already approved")
    approvers = (*state.approvers, event.approver)
    to: Status = "approved" if len(approvers) >= state.approvals_required else state.status
    return Applied(
        replace(state, approvers=approvers, status=to, last=event.ref),
        state.status,
        to,
        {"approver": event.approver, "role": role, "approvals": len(approvers)},
        approver_role=role,
    )


def _move(
    state: EscrowState, event: ChainEvent, to: Status, details: dict[str, str | int]
) -> Applied:
    return Applied(replace(state, status=to, last=event.ref), state.status, to, details)


def fold(
    state: EscrowState | None, events: Iterable[ChainEvent]
) -> tuple[EscrowState | None, list[tuple[ChainEvent, Outcome]]]:
    """Apply events in chain order; parked events before the deployment are retried after it.

    Returns the final state and every event's outcome (a still-parked event's outcome is
    PARK). Used by the handler per escrow and by the property tests as the reference.
    """
    ordered = sorted(events, key=lambda e: e.ref)
    outcomes: list[tuple[ChainEvent, Outcome]] = []
    waiting: list[ChainEvent] = []
    for event in ordered:
        if state is None and not isinstance(event, Deployed):
            waiting.append(event)
            continue
        outcome = apply(state, event)
        outcomes.append((event, outcome))
        if isinstance(outcome, Applied):
            if state is None:
                # the deployment arrived: parked events follow it in chain order
                for parked in waiting:
                    result = apply(outcome.state, parked)
                    outcomes.append((parked, result))
                    if isinstance(result, Applied):
                        outcome = result
                waiting = []
            state = outcome.state
    outcomes.extend((event, PARK) for event in waiting)
    return state, outcomes


def position(ref: ChainRef) -> tuple[int, int]:
    """Chain order within one chain: block number, then log index."""
    return (ref.block_number, ref.log_index)


def check_invariants(state: EscrowState, allowed_ever: set[str]) -> None:
    """Raise AssertionError when a state could not have come from valid rules."""
    if state.status not in STATUSES:
        raise AssertionError(f"unknown status {state.status}")
    if len(set(state.approvers)) != len(state.approvers):
        raise AssertionError("an approver was counted twice")
    if not set(state.approvers) <= allowed_ever:
        raise AssertionError("an approval came from someone never allowed to approve")
    if state.status == "approved" and len(state.approvers) < state.approvals_required:
        raise AssertionError("approved without enough approvals")
    if state.status == "created" and len(state.approvers) >= state.approvals_required:
        raise AssertionError("enough approvals but still created")
    if not 1 <= state.approvals_required <= 3:
        raise AssertionError("approvals required outside 1-3")
