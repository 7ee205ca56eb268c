"""Property tests over random chain-event sequences, delivery orders and duplicates.

The state is always valid, approvals never exceed the distinct allowed approvers, and
(on the database) every distinct chain event is accounted for exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.settlement import domain
from fusion_prime.settlement.events import parse_envelope
from tests.harness import fetch
from tests.settlement.factory import Escrow, deliver, new_address, redeliver


@dataclass
class Scenario:
    escrow: Escrow
    allowed_ever: set[str]
    events: list[Envelope]  # in chain order


@st.composite
def scenarios(draw: Any) -> Scenario:
    e = Escrow()
    # parties may coincide (e.g. arbiter == payer): distinct approvers shrink accordingly
    if draw(st.booleans()):
        e.arbiter = draw(st.sampled_from([e.payer, e.payee]))
    stranger = new_address()
    spare_arbiters = [new_address(), new_address()]
    allowed = {e.payer, e.payee, e.arbiter}
    events = [e.deployed(required=draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(0, 10))):
        op = draw(st.sampled_from(["approve", "approve", "approve", "release", "refund", "arb"]))
        if op == "approve":
            who = draw(st.sampled_from([e.payer, e.payee, e.arbiter, stranger]))
            events.append(e.approved(who))
        elif op == "release":
            events.append(e.released())
        elif op == "refund":
            events.append(e.refunded())
        else:
            e.arbiter = draw(st.sampled_from(spare_arbiters))
            allowed.add(e.arbiter)
            events.append(e.arbiter_changed(e.arbiter))
    return Scenario(e, allowed, events)


@given(scenario=scenarios(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_domain_state_is_always_valid(scenario: Scenario, data: st.DataObject) -> None:
    chain = [parse_envelope(x) for x in scenario.events]
    delivery = data.draw(st.permutations(chain))
    state, outcomes = domain.fold(None, delivery)
    assert state is not None
    domain.check_invariants(state, scenario.allowed_ever)
    expected = _reference(scenario.events)
    assert (state.status, state.arbiter, set(state.approvers)) == (
        expected.status,
        expected.arbiter,
        expected.approvers,
    )
    assert len(state.approvers) <= len(scenario.allowed_ever)
    assert len(outcomes) == len(chain)
    # step by step, every intermediate state is valid too
    current: domain.EscrowState | None = None
    for event in chain:
        outcome = domain.apply(current, event)
        if isinstance(outcome, domain.Applied):
            current = outcome.state
            domain.check_invariants(current, scenario.allowed_ever)
    assert current == state


@st.composite
def deliveries(draw: Any, scenario: Scenario) -> list[list[Envelope]]:
    """The scenario's events in random order, some twice, cut into random batches."""
    events = list(draw(st.permutations(scenario.events)))
    for _ in range(draw(st.integers(0, 3))):
        again = draw(st.sampled_from(scenario.events))
        events.insert(
            draw(st.integers(0, len(events))), redeliver(again, new_id=draw(st.booleans()))
        )
    batches: list[list[Envelope]] = []
    while events:
        size = draw(st.integers(1, 4))
        batches.append(events[:size])
        events = events[size:]
    return batches


@dataclass
class Expected:
    status: str
    arbiter: str
    approvers: set[str]
    applied: set[tuple[str, int]]  # (tx_hash, log_index) of the events that took effect


def _reference(events: list[Envelope]) -> Expected:
    """The documented rules, written independently of the handler and of domain.fold, on
    the distinct events in chain order: the delivery order cannot matter by construction."""
    distinct = {(x.data["tx_hash"], x.data["log_index"]): x.data | {"type": x.type} for x in events}
    ordered = sorted(distinct.values(), key=lambda d: (d["block_number"], d["log_index"]))
    deploy = ordered[0]
    assert deploy["type"] == "escrow.deployed"
    payer, payee, arbiter = deploy["payer"], deploy["payee"], deploy["arbiter"]
    required, status = deploy["approvals_required"], "created"
    approvers: list[str] = []
    applied = {(deploy["tx_hash"], deploy["log_index"])}
    for d in ordered[1:]:
        kind, took = d["type"], False
        if status in ("released", "refunded"):
            continue
        if kind == "escrow.approved":
            who = d["approver"]
            if who in (payer, payee, arbiter) and who not in approvers:
                approvers.append(who)
                took = True
        elif kind == "escrow.arbiter_changed":
            arbiter = d["new_arbiter"]
            approvers = [a for a in approvers if a in (payer, payee, arbiter)]
            took = True
        elif kind == "escrow.released":
            took = status == "approved"
            status = "released" if took else status
        elif kind == "escrow.refunded":
            took, status = True, "refunded"
        if status in ("created", "approved"):
            status = "approved" if len(approvers) >= required else "created"
        if took:
            applied.add((d["tx_hash"], d["log_index"]))
    return Expected(status, arbiter, set(approvers), applied)


@given(scenario=scenarios(), data=st.data())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_handler_state_matches_rules_under_any_delivery(
    engine: AsyncEngine, db: str, scenario: Scenario, data: st.DataObject
) -> None:
    batches = data.draw(deliveries(scenario))
    for batch in batches:
        await deliver(engine, batch)
    address = scenario.escrow.address
    rows = await fetch(db, "SELECT * FROM escrows WHERE address = $1", address)
    approvers = [
        r["approver"]
        for r in await fetch(
            db,
            "SELECT approver FROM escrow_approvals WHERE escrow_address = $1 "
            "ORDER BY block_number, log_index",
            address,
        )
    ]
    expected = _reference(scenario.events)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == expected.status
    assert row["arbiter"] == expected.arbiter
    assert set(approvers) == expected.approvers
    assert row["approvals_count"] == len(approvers)
    assert len(set(approvers)) == len(approvers)
    assert set(approvers) <= scenario.allowed_ever
    if row["status"] == "approved":
        assert len(approvers) >= row["approvals_required"]
    counts = await fetch(
        db,
        "SELECT (SELECT count(*) FROM escrow_history WHERE escrow_address = $1 "
        "AND superseded_at IS NULL) AS applied, "
        "(SELECT count(*) FROM escrow_anomalies WHERE escrow_address = $1 "
        "AND superseded_at IS NULL) AS anomalies, "
        "(SELECT count(*) FROM parked_events WHERE escrow_address = $1) AS parked, "
        "(SELECT count(*) FROM chain_events WHERE escrow_address = $1) AS distinct_events",
        address,
    )
    c = counts[0]
    assert c["parked"] == 0
    assert c["applied"] + c["anomalies"] == c["distinct_events"] == len(scenario.events)
    history = await fetch(
        db,
        "SELECT tx_hash, log_index FROM escrow_history WHERE escrow_address = $1 "
        "AND superseded_at IS NULL",
        address,
    )
    assert {(h["tx_hash"], h["log_index"]) for h in history} == expected.applied
