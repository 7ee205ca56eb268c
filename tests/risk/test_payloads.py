"""The documents a pass builds in bulk (shared price strings and JSON, envelopes built
without re-validation) are exactly those built one at a time and validated."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.risk.domain import Position, State, Tier, decide, evaluate
from fusion_prime.risk.repository import copy_margin_events
from fusion_prime.risk.service import Shared, build_event, dec_str, health_json, snapshot_record
from fusion_prime.risk.spec import SPEC
from tests.risk.test_domain import CFG, NOW, PARAMS, book, prices


def _accounts() -> list[tuple[str, list[Position], dict[str, str]]]:
    return [
        ("acct-healthy", book(6000), {}),
        ("acct-warning", book(8000), {}),
        ("acct-liquidation", book(9900), {"ETH": "2500.123456789"}),
        ("acct-deep", book(20000), {"ETH": "1000", "WBTC": "30000.5"}),
        ("acct-no-debt", [Position("ETH", 10**18, 0, 18)], {}),
    ]


@pytest.mark.parametrize("reuse", [False, True])
def test_bulk_documents_equal_the_one_at_a_time_documents(reuse: bool) -> None:
    shared = Shared()
    for account_id, positions, over in _accounts() * (2 if reuse else 1):
        h = evaluate(positions, PARAMS, prices(**over), CFG, NOW)
        d = decide(State(Tier.HEALTHY, Tier.HEALTHY, None, NOW - timedelta(days=1)), h, CFG, NOW)
        fast = build_event(account_id, "margin.tier_changed", d, h, NOW, shared)
        slow = build_event(account_id, "margin.tier_changed", d, h, NOW)
        # the constructed envelope is one the validating constructor accepts unchanged
        assert Envelope.model_validate(fast.model_dump()) == fast
        assert Envelope.from_json(fast.to_json()).to_json() == fast.to_json()
        assert fast.data == slow.data
        assert fast.data["prices"] == {a: dec_str(p) for a, p in sorted(h.prices.items())}
        assert fast.data == {
            "account_id": account_id,
            "from_tier": "healthy",
            "to_tier": d.to_tier.value if d.to_tier else None,
            **health_json(h),
        }
        rec = snapshot_record(account_id, "tier_change", h, NOW, shared)
        assert rec == snapshot_record(account_id, "tier_change", h, NOW)
        assert json.loads(rec[-1]) == fast.data["prices"]
        # a caller changing its copy of the prices never changes another document's
        fast.data["prices"]["ETH"] = "0"
        assert shared.prices(h)[0] == slow.data["prices"]


async def test_margin_event_rows_are_the_envelopes_fields(
    make_database: Callable[..., Awaitable[str]],
) -> None:
    """The text COPY of margin_events stores exactly the envelope's values (numerics of
    its decimal strings, its time, its prices), with fields that need escaping too."""
    url = await make_database("risk", SPEC.migrations_dir)
    shared = Shared()
    envelopes = []
    for account_id, positions, over in _accounts():
        h = evaluate(positions, PARAMS, prices(**over), CFG, NOW)
        d = decide(State(), h, CFG, NOW)
        envelopes.append(build_event(account_id, "margin.tier_changed", d, h, NOW, shared))
    odd = build_event("acct-odd", "margin.tier_changed", d, h, NOW)
    envelopes.append(odd.model_copy(update={"subject": "a\\b\tc\nd\re"}))
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            await copy_margin_events(conn, envelopes)
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM margin_events")}
    finally:
        await conn.close()
    assert len(rows) == len(envelopes)
    for e in envelopes:
        r = rows[e.id]
        assert (r["account_id"], r["event_type"]) == (e.subject, e.type)
        assert (r["from_tier"], r["to_tier"]) == (e.data["from_tier"], e.data["to_tier"])
        for col in ("factor", "collateral_value", "weighted_collateral", "debt_value",
                    "borrow_capacity", "max_repay_value"):  # fmt: skip
            want = e.data[col]
            assert r[col] == (None if want is None else Decimal(want)), col
        assert json.loads(r["prices"]) == e.data["prices"]
        assert r["created_at"] == e.time
