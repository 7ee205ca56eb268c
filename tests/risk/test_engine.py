"""The incremental numpy path agrees with a full recomputation and with the Decimal rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from fusion_prime.risk.domain import LADDER, Position, Price, RiskParams, TierConfig, evaluate
from fusion_prime.risk.engine import UNKNOWN, Book, synthetic_book

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _with_boundary_accounts(seed: int) -> Book:
    """A random book plus accounts whose exact factor is each tier bound, or 1e-6 off it."""
    base = synthetic_book(1500, n_assets=12, seed=seed)
    n = base.n
    prices = list(base.price_exact)
    lts = list(base.lt_exact)
    prices[0] = prices[1] = Decimal(1)
    lts[0] = Decimal("0.8")
    extra_acc, extra_asset, extra_c, extra_d = [], [], [], []
    k = n
    for debt in (880, 1000, 1100):  # 1375 x 0.8 = 1100 -> factors 1.25, 1.10, 1.00
        for off in (-1, 0, 1):
            extra_acc += [k, k]
            extra_asset += [0, 1]
            extra_c += [1375 * 10**6, 0]
            extra_d += [0, debt * 10**6 + off]
            k += 1
    return Book(
        k,
        np.concatenate([base.pos_account, np.array(extra_acc, dtype=np.int32)]),
        np.concatenate([base.pos_asset, np.array(extra_asset, dtype=np.int32)]),
        np.concatenate([base.coll, np.array(extra_c, dtype=np.int64)]),
        np.concatenate([base.debt, np.array(extra_d, dtype=np.int64)]),
        base.unit_exp,
        prices,
        lts,
    )


def _fresh(book: Book) -> Book:
    fresh = Book(
        book.n,
        book.pos_account,
        book.pos_asset,
        book.coll,
        book.debt,
        book.unit_exp,
        list(book.price_exact),
        list(book.lt_exact),
    )
    fresh.valid[:] = book.valid
    fresh.full()
    return fresh


def _decimal_tiers(book: Book) -> np.ndarray:
    """Tier codes from domain.evaluate, one account at a time (the reference)."""
    params = {
        str(a): RiskParams(str(a), Decimal(0), book.lt_exact[a], Decimal(0), timedelta(days=1))
        for a in range(book.n_assets)
    }
    prices = {
        str(a): Price(str(a), book.price_exact[a], NOW)
        for a in range(book.n_assets)
        if book.valid[a]
    }
    out = np.empty(book.n, dtype=np.int8)
    for acc in range(book.n):
        lo, hi = int(book.acct_ptr[acc]), int(book.acct_ptr[acc + 1])
        ps = [
            Position(str(int(book.pos_asset[p])), int(book.coll[p]), int(book.debt[p]), 6)
            for p in range(lo, hi)
        ]
        h = evaluate(ps, params, prices, TierConfig(), NOW)
        out[acc] = UNKNOWN if h.status.value == "unknown_price" else LADDER.index(h.status)
    return out


def _assert_same(book: Book) -> None:
    fresh = _fresh(book)
    finite = np.isfinite(fresh.factor)
    assert (np.isfinite(book.factor) == finite).all()
    rel = np.abs(book.factor[finite] - fresh.factor[finite]) / fresh.factor[finite]
    assert rel.max() <= 1e-9
    assert (book.tier == fresh.tier).all()


def test_incremental_matches_full_and_decimal_after_many_ticks() -> None:
    rng = np.random.default_rng(11)
    book = _with_boundary_accounts(seed=3)
    book.full()
    assert (book.tier == _decimal_tiers(book)).all()
    # the boundary accounts classify exactly: 1.25 healthy, 1.25-1e-9 warning, ...
    tail = book.tier[-9:].tolist()
    assert tail == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    tiers = book.tier.copy()
    for step in range(4000):
        asset = int(rng.integers(0, book.n_assets))
        if step % 400 == 399:
            res = book.set_valid(asset, not bool(book.valid[asset]))
        else:
            move = Decimal(str(round(float(rng.uniform(0.9, 1.1)), 4)))
            price = max(
                Decimal("0.0001"), (book.price_exact[asset] * move).quantize(Decimal("1e-4"))
            )
            res = book.tick(asset, price)
        # reported changes are exactly the tier differences
        changed = np.flatnonzero(book.tier != tiers)
        assert sorted(res.accounts.tolist()) == changed.tolist()
        assert (res.old == tiers[res.accounts]).all()
        tiers = book.tier.copy()
        if step % 1000 == 999:
            _assert_same(book)
    for a in range(book.n_assets):
        book.set_valid(a, True)
    # bring the boundary assets back to 1 after thousands of float updates
    book.tick(0, Decimal(1))
    book.tick(1, Decimal(1))
    _assert_same(book)
    assert book.tier[-9:].tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert (book.tier == _decimal_tiers(book)).all()
    assert book.refined > 0


def test_unknown_price_marks_holders_only() -> None:
    book = synthetic_book(500, n_assets=10, seed=5)
    book.full()
    holders = np.unique(book.a_account[book.asset_ptr[4] : book.asset_ptr[5]])
    res = book.set_valid(4, False)
    assert res.evaluated == len(holders)
    assert (book.tier[holders] == UNKNOWN).all()
    others = np.setdiff1d(np.arange(book.n), holders)
    assert (book.tier[others] != UNKNOWN).all()
    book.set_valid(4, True)
    assert (book.tier != UNKNOWN).all()
