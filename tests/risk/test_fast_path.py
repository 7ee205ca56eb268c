"""The fast paths of a pass against their definitions: `domain.Evaluator` against
`domain.evaluate` on random books (amounts placed exactly on the tier and hysteresis
bounds included, 6 to 36 decimals, missing, stale and future prices, zero-threshold
collateral), and the trimmed decimal strings against quantize-then-normalize."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.risk.domain import (
    EXACT,
    Evaluator,
    Position,
    Price,
    RiskParams,
    TierConfig,
    evaluate,
)
from fusion_prime.risk.service import dec_str

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
ASSETS = ["A", "B", "C", "D", "E", "F"]


def _params(rng: random.Random) -> dict[str, RiskParams]:
    out = {}
    for a in ASSETS:
        lt = Decimal(rng.choice(["0", "0.5", "0.75", "0.8", "0.825", "0.9", "1"]))
        ltv = (lt * Decimal(rng.choice(["0", "0.5", "0.9", "1"]))).quantize(Decimal("1e-4"))
        out[a] = RiskParams(
            a, ltv, lt, Decimal(rng.choice(["0", "0.05", "0.1"])), timedelta(hours=1)
        )
    return out


def _prices(rng: random.Random) -> dict[str, Price]:
    out = {}
    for a in ASSETS:
        kind = rng.random()
        if kind < 0.05:
            continue  # missing
        age = timedelta(minutes=1)
        if kind < 0.1:
            age = timedelta(hours=2)  # stale
        elif kind < 0.13:
            age = -timedelta(minutes=5)  # beyond the allowed future skew
        digits = rng.choice([0, 2, 4, 8, 18])
        p = Decimal(rng.randrange(1, 10**12)).scaleb(-digits)
        out[a] = Price(a, p, NOW - age)
    return out


def _book(rng: random.Random, params: dict[str, RiskParams], cfg: TierConfig) -> list[Position]:
    held = rng.sample(ASSETS, rng.randrange(1, 5))
    decimals = {a: rng.choice([0, 6, 8, 18, 36]) for a in ASSETS}
    positions = [
        Position(
            a,
            rng.choice([0, rng.randrange(1, 10 ** rng.randrange(1, 79))]),
            rng.choice([0, 0, rng.randrange(1, 10 ** rng.randrange(1, 40))]),
            decimals[a],
        )
        for a in held
    ]
    if rng.random() < 0.4:
        # a debt-only asset sized so the account's factor is exactly a bound (or a bound
        # plus the hysteresis), where float arithmetic cannot decide
        target = rng.choice([*cfg.bounds, *(b + cfg.hysteresis for b in cfg.bounds)])
        weighted = sum(
            (
                Decimal(p.collateral).scaleb(-p.decimals) * params[p.asset].liquidation_threshold
                for p in positions
            ),
            Decimal(0),
        )
        free = [a for a in ASSETS if a not in held]
        if weighted > 0 and free:
            # debt value = weighted / target, in base units of a 1-priced 36-decimal asset
            units = EXACT.divide(weighted, target).scaleb(36)
            if units == units.to_integral_value() and units > 0:
                positions.append(Position(free[0], 0, int(units), 36))
    return positions


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_evaluator_equals_evaluate_on_random_books(seed: int) -> None:
    rng = random.Random(seed)
    cfg = TierConfig()
    params = _params(rng)
    prices = _prices(rng)
    books = [_book(rng, params, cfg) for _ in range(40)]
    # bound-placed debt uses a price of exactly 1
    for a in ASSETS:
        if a in prices and rng.random() < 0.5:
            prices[a] = Price(a, Decimal(1), prices[a].source_time)
    ev = Evaluator(params, prices, cfg, NOW)
    for positions in books:
        assert ev.evaluate(positions) == evaluate(positions, params, prices, cfg, NOW)


def test_evaluator_on_the_exact_bounds() -> None:
    """Accounts whose factor is exactly each bound and bound + hysteresis, one unit of
    debt more and less: the same tier and values as the definition."""
    cfg = TierConfig()
    params = {
        "ETH": RiskParams("ETH", Decimal("0.75"), Decimal("0.8"), Decimal("0.05"), timedelta(1)),
        "USD": RiskParams("USD", Decimal("0.8"), Decimal("0.8"), Decimal("0.05"), timedelta(1)),
    }
    prices = {
        "ETH": Price("ETH", Decimal("3000.25"), NOW),
        "USD": Price("USD", Decimal("1"), NOW),
    }
    ev = Evaluator(params, prices, cfg, NOW)
    weighted = Decimal(2) * Decimal("3000.25") * Decimal("0.8")
    seen = set()
    for target in [*cfg.bounds, *(b + cfg.hysteresis for b in cfg.bounds)]:
        base = int(EXACT.divide(weighted, target).scaleb(18).to_integral_value())
        for debt in (base - 1, base, base + 1):
            positions = [Position("ETH", 2 * 10**18, 0, 18), Position("USD", 0, debt, 18)]
            h = ev.evaluate(positions)
            assert h == evaluate(positions, params, prices, cfg, NOW)
            seen.add(h.status)
    assert len(seen) == 4


def _reference_dec_str(value: Decimal) -> str:
    q = value.quantize(Decimal("1e-18"), context=EXACT) if value.adjusted() < 100 else value
    return format(q.normalize(EXACT), "f")


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(min_value=-(10**170), max_value=10**170),
    st.integers(min_value=-60, max_value=40),
)
def test_dec_str_equals_quantize_then_normalize(coefficient: int, exponent: int) -> None:
    value = Decimal(coefficient).scaleb(exponent)
    assert dec_str(value) == _reference_dec_str(value)


def test_dec_str_edge_values() -> None:
    for raw in ["0", "0E-30", "-1.5", "1E+150", "1.0000000000000000005", "1.0000000000000000015",
                "123.456000", "1e-19", "5e-19", "1.5e-18", "-0.0000000000000000005"]:  # fmt: skip
        assert dec_str(Decimal(raw)) == _reference_dec_str(Decimal(raw))
    nines = Decimal(10**99) - Decimal("1e-70")  # 170 digits: normalizing alone would round
    assert dec_str(nines) == _reference_dec_str(nines)
