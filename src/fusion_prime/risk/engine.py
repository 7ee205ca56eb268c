"""Bulk margin engine: a whole book of accounts in numpy float64 arrays.

Why float64 is enough: every sum is of non-negative terms, so relative error stays near
1e-15 per step; the only place a rounding error can change an answer is a factor lying
within ~1e-9 of a tier bound, and those accounts are re-classified exactly with the
Decimal rules from domain.py (`_refine`). Amounts are held exactly as int64 mantissas
times a per-asset power of ten, which is what the refinement reads.

A price tick touches only the holders of that asset (per-asset position index): each
holder's weighted-collateral and debt sums move by amount x price delta, so the cost is
proportional to the holders, not to the book.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from fusion_prime.risk.domain import EXACT, LADDER, TierConfig, classify

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

UNKNOWN = np.int8(len(LADDER))  # tier code of unknown_price; 0..3 follow LADDER
REFINE_TOLERANCE = 1e-9


@dataclass
class TickResult:
    """Accounts whose tier code changed in one update (indices into the book)."""

    accounts: I32
    old: I8
    new: I8
    evaluated: int


class Book:
    """Positions (account, asset, collateral, debt), prices and per-account sums.

    Positions must be unique per (account, asset). `coll`/`debt` are int64 mantissas;
    the amount in whole units is mantissa x 10**unit_exp[asset].
    """

    def __init__(
        self,
        n_accounts: int,
        pos_account: I32,
        pos_asset: I32,
        coll: I64,
        debt: I64,
        unit_exp: Sequence[int],
        prices: Sequence[Decimal],
        liquidation_threshold: Sequence[Decimal],
        config: TierConfig | None = None,
    ) -> None:
        self.n = n_accounts
        self.n_assets = len(unit_exp)
        self.config = config or TierConfig()
        self.bounds = np.array([float(b) for b in self.config.bounds])
        order = np.lexsort((pos_asset, pos_account))
        self.pos_account = np.ascontiguousarray(pos_account[order], dtype=np.int32)
        self.pos_asset = np.ascontiguousarray(pos_asset[order], dtype=np.int32)
        self.coll = np.ascontiguousarray(coll[order], dtype=np.int64)
        self.debt = np.ascontiguousarray(debt[order], dtype=np.int64)
        if len(self.pos_account) > 1:
            same = (np.diff(self.pos_account) == 0) & (np.diff(self.pos_asset) == 0)
            if same.any():
                raise ValueError("positions must be unique per (account, asset)")
        self.acct_ptr = np.searchsorted(self.pos_account, np.arange(self.n + 1)).astype(np.int64)
        self.unit_exp = list(unit_exp)
        scale = np.array([10.0**e for e in self.unit_exp])
        self.coll_units = self.coll * scale[self.pos_asset]
        self.debt_units = self.debt * scale[self.pos_asset]
        # per-asset index: contiguous copies so a tick reads sequential memory
        by_asset = np.argsort(self.pos_asset, kind="stable")
        self.asset_ptr = np.searchsorted(self.pos_asset[by_asset], np.arange(self.n_assets + 1))
        self.a_account = self.pos_account[by_asset]
        self.a_coll = self.coll_units[by_asset]
        self.a_debt = self.debt_units[by_asset]
        self.price_exact = list(prices)
        self.lt_exact = list(liquidation_threshold)
        self.price = np.array([float(p) for p in prices])
        self.lt = np.array([float(x) for x in liquidation_threshold])
        self.valid = np.ones(self.n_assets, dtype=bool)
        self.weighted = np.zeros(self.n)
        self.debt_value = np.zeros(self.n)
        self.invalid = np.zeros(self.n, dtype=np.int16)
        self.factor = np.full(self.n, np.inf)
        self.tier = np.zeros(self.n, dtype=np.int8)
        self.refined = 0

    # -- full recomputation --------------------------------------------------------

    def full(self) -> I8:
        """Recompute every account from positions and prices; returns the tier codes."""
        w_per_asset = self.price * self.lt
        self.weighted = np.bincount(
            self.pos_account,
            weights=self.coll_units * w_per_asset[self.pos_asset],
            minlength=self.n,
        ).astype(np.float64, copy=False)
        self.debt_value = np.bincount(
            self.pos_account, weights=self.debt_units * self.price[self.pos_asset], minlength=self.n
        ).astype(np.float64, copy=False)
        # holders of assets without a usable price, from the per-asset index (usually none)
        self.invalid = np.zeros(self.n, dtype=np.int16)
        for a in np.flatnonzero(~self.valid).tolist():
            self.invalid[self.a_account[self.asset_ptr[a] : self.asset_ptr[a + 1]]] += 1
        idx = np.arange(self.n, dtype=np.int32)
        self.factor, self.tier = self._classify(idx, self.weighted, self.debt_value, self.invalid)
        return self.tier

    def _classify(self, idx: I32, w: F64, d: F64, invalid: npt.NDArray[np.int16]) -> tuple[F64, I8]:
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(d > 0, w / np.where(d > 0, d, 1.0), np.inf)
        b = self.bounds
        tier = ((f < b[0]).astype(np.int8) + (f < b[1]) + (f < b[2])).astype(np.int8)
        near = np.zeros(len(f), dtype=bool)
        for bound in b:
            near |= np.abs(f - bound) <= REFINE_TOLERANCE * bound
        if near.any():
            where = np.flatnonzero(near)
            tier[where] = self._refine(idx[where])
        tier[invalid > 0] = UNKNOWN
        return f, tier

    def _refine(self, accounts: I32) -> I8:
        """Exact Decimal tiers for accounts whose float factor sits on a bound."""
        out = np.empty(len(accounts), dtype=np.int8)
        for k, a in enumerate(accounts.tolist()):
            w, d = self.exact_sums(a)
            out[k] = LADDER.index(classify(w, d, self.config))
        self.refined += len(accounts)
        return out

    def exact_sums(self, account: int) -> tuple[Decimal, Decimal]:
        """(weighted collateral, debt value) of one account, exactly."""
        w = d = Decimal(0)
        for p in range(int(self.acct_ptr[account]), int(self.acct_ptr[account + 1])):
            a = int(self.pos_asset[p])
            price = self.price_exact[a]
            e = self.unit_exp[a]
            c_units = Decimal(int(self.coll[p])).scaleb(e, EXACT)
            d_units = Decimal(int(self.debt[p])).scaleb(e, EXACT)
            w = EXACT.add(w, EXACT.multiply(EXACT.multiply(c_units, price), self.lt_exact[a]))
            d = EXACT.add(d, EXACT.multiply(d_units, price))
        return w, d

    # -- incremental updates -------------------------------------------------------

    def tick(self, asset: int, price: Decimal) -> TickResult:
        """Apply one price and re-evaluate only the holders of `asset`."""
        new = float(price)
        delta = new - self.price[asset]
        self.price[asset] = new
        self.price_exact[asset] = price
        s, e = int(self.asset_ptr[asset]), int(self.asset_ptr[asset + 1])
        acc = self.a_account[s:e]
        # accounts are unique within one asset's slice, so fancy-index += is exact
        self.weighted[acc] += self.a_coll[s:e] * (delta * self.lt[asset])
        self.debt_value[acc] += self.a_debt[s:e] * delta
        return self._reclassify(acc)

    def set_valid(self, asset: int, valid: bool) -> TickResult:
        """Mark an asset's price missing/stale (False) or usable again (True)."""
        if bool(self.valid[asset]) == valid:
            return TickResult(np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0, np.int8), 0)
        self.valid[asset] = valid
        s, e = int(self.asset_ptr[asset]), int(self.asset_ptr[asset + 1])
        acc = self.a_account[s:e]
        self.invalid[acc] += np.int16(-1 if valid else 1)
        return self._reclassify(acc)

    def _reclassify(self, acc: I32) -> TickResult:
        old = self.tier[acc]
        f, t = self._classify(acc, self.weighted[acc], self.debt_value[acc], self.invalid[acc])
        self.factor[acc] = f
        self.tier[acc] = t
        changed = np.flatnonzero(t != old)
        return TickResult(acc[changed], old[changed], t[changed], len(acc))

    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


def synthetic_book(
    n_accounts: int,
    n_assets: int = 20,
    per_account: int = 4,
    seed: int = 7,
    config: TierConfig | None = None,
) -> Book:
    """A reproducible random book for benchmarks and tests (generated, never stored).

    Each account holds `per_account` distinct assets: the first half as collateral, the
    rest as debt (the last one both), sized so factors spread over every tier.
    """
    rng = np.random.default_rng(seed)
    prices = [Decimal(str(round(float(p), 4))) for p in rng.uniform(0.5, 5000.0, n_assets)]
    lts = [Decimal(str(x)) for x in rng.choice([0.70, 0.75, 0.80, 0.825, 0.85, 0.9], n_assets)]
    price_f = np.array([float(p) for p in prices])
    lt_f = np.array([float(x) for x in lts])
    assets = np.empty((n_accounts, per_account), dtype=np.int32)
    chunk = 200_000
    for start in range(0, n_accounts, chunk):
        stop = min(n_accounts, start + chunk)
        keys = rng.random((stop - start, n_assets), dtype=np.float32)
        assets[start:stop] = np.argpartition(keys, per_account, axis=1)[:, :per_account]
    n_coll = max(1, per_account // 2)
    coll_value = rng.lognormal(8.0, 1.5, (n_accounts, per_account))
    coll_value[:, n_coll:-1] = 0.0
    coll = np.round(coll_value / price_f[assets] * 1e6).astype(np.int64)
    weighted = (coll * 1e-6 * price_f[assets] * lt_f[assets]).sum(axis=1)
    target = rng.uniform(0.8, 2.0, n_accounts)
    debt_total = weighted / target
    debt_total[rng.random(n_accounts) < 0.1] = 0.0  # some accounts borrow nothing
    share = rng.random((n_accounts, per_account))
    share[:, :n_coll] = 0.0
    share /= share.sum(axis=1, keepdims=True)
    debt = np.round(debt_total[:, None] * share / price_f[assets] * 1e6).astype(np.int64)
    pos_account = np.repeat(np.arange(n_accounts, dtype=np.int32), per_account)
    return Book(
        n_accounts,
        pos_account,
        assets.reshape(-1),
        coll.reshape(-1),
        debt.reshape(-1),
        [-6] * n_assets,
        prices,
        lts,
        config,
    )
