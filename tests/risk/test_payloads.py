"""The documents a pass builds in bulk (shared price strings and JSON, envelopes built
without re-validation) are exactly those built one at a time and validated."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.risk.domain import Position, State, Tier, TierConfig, decide, evaluate
from fusion_prime.risk.repository import (
    OUTBOX_COLUMNS,
    SNAPSHOT_COLUMNS,
    copy_margin_events,
    copy_snapshots,
    copy_snapshots_binary,
    outbox_records,
    send_outbox,
)
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


def _odd_healths() -> list[Any]:
    """Healths of random books (test_fast_path's generator: 0-36 decimals, 78-digit
    amounts, missing and stale prices), plus values whose Decimal form has an exponent,
    trailing zeros or a negative zero."""
    from tests.risk.test_fast_path import _book, _params, _prices

    rng = random.Random(4)
    cfg = TierConfig()
    out = []
    for _ in range(30):
        params, prices_ = _params(rng), _prices(rng)
        out += [evaluate(_book(rng, params, cfg), params, prices_, cfg, NOW) for _ in range(10)]
    h = out[0]
    for raw in ("1E+5", "0E-30", "-0", "123.4500", "1.5E-40", str(10**77)):
        out.append(replace(h, factor=Decimal(raw), collateral_value=Decimal(raw)))
    return out


async def test_text_copies_store_what_binary_copies_stored(
    make_database: Callable[..., Awaitable[str]],
) -> None:
    """health_snapshots and outbox rows by text COPY (this round) against the binary COPY
    of the same records (the previous code): every stored column, as text, equal."""
    url = await make_database("risk", SPEC.migrations_dir)
    shared = Shared()
    snaps = [
        snapshot_record(f"acct-{i}", "tier_change", h, NOW, shared)
        for i, h in enumerate(_odd_healths())
    ]
    snaps.append(("a\\b\tc\nd\re", *snaps[0][1:]))
    envelopes = []
    for account_id, positions, over in _accounts():
        h = evaluate(positions, PARAMS, prices(**over), CFG, NOW)
        d = decide(State(), h, CFG, NOW)
        envelopes.append(build_event(account_id, "margin.tier_changed", d, h, NOW, shared))
    odd = envelopes[0]
    envelopes.append(
        odd.model_copy(update={"id": uuid.uuid4(), "subject": "a\\b\tc\nd\re\"", "data": {
            **odd.data, "account_id": "q\"uote\\back\u00e9\u2028\ttab"}})
    )  # fmt: skip
    records = outbox_records(envelopes)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        got: dict[str, list[Any]] = {}
        for way in ("binary", "text"):
            async with conn.transaction():
                if way == "binary":
                    await copy_snapshots_binary(conn, snaps)
                    await conn.copy_records_to_table(
                        "outbox", records=records, columns=OUTBOX_COLUMNS
                    )
                else:
                    await copy_snapshots(conn, snaps)
                    await send_outbox(conn, records)
                got[way] = [
                    [tuple(r) for r in await conn.fetch(
                        f"SELECT {', '.join(f'{c}::text' for c in SNAPSHOT_COLUMNS)} "
                        "FROM health_snapshots ORDER BY id")],
                    [tuple(r) for r in await conn.fetch(
                        "SELECT id::text, topic, subject, event_type, envelope::text "
                        "FROM outbox ORDER BY id")],
                ]  # fmt: skip
                await conn.execute("DELETE FROM health_snapshots; DELETE FROM outbox")
    finally:
        await conn.close()
    assert len(got["text"][0]) == len(snaps)
    assert len(got["text"][1]) == len(envelopes)
    assert got["text"] == got["binary"]
    # and the stored outbox envelope is the envelope
    stored = {r[0]: r[4] for r in got["text"][1]}
    for e in envelopes:
        assert Envelope.from_json(stored[str(e.id)]) == Envelope.from_json(e.to_json())
