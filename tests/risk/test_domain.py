"""Decimal rules, checked against hand-computed accounts (6, 8 and 18 decimal assets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.risk.domain import (
    Position,
    Price,
    RiskParams,
    State,
    Tier,
    TierConfig,
    decide,
    evaluate,
    with_hysteresis,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
CFG = TierConfig()

PARAMS = {
    "USDC": RiskParams("USDC", D("0.80"), D("0.80"), D("0.05"), HOUR),
    "WBTC": RiskParams("WBTC", D("0.70"), D("0.75"), D("0.10"), HOUR),
    "ETH": RiskParams("ETH", D("0.75"), D("0.80"), D("0.05"), HOUR),
    "DAI": RiskParams("DAI", D("0.75"), D("0.80"), D("0.05"), HOUR),
    # listed but not accepted as collateral (Aave: liquidation threshold 0)
    "GOV": RiskParams("GOV", D("0"), D("0"), D("0.10"), HOUR),
}


def prices(**over: str) -> dict[str, Price]:
    base = {"USDC": "1", "WBTC": "60000", "ETH": "3000", "DAI": "1", "GOV": "10"}
    base.update(over)
    return {a: Price(a, D(p), NOW - timedelta(minutes=1)) for a, p in base.items()}


def book(debt_usdc: int) -> list[Position]:
    """2 ETH (18 dec) + 0.1 WBTC (8 dec) collateral, debt in USDC (6 dec)."""
    return [
        Position("ETH", 2 * 10**18, 0, 18),
        Position("WBTC", 10_000_000, 0, 8),
        Position("USDC", 0, debt_usdc * 10**6, 6),
    ]


def test_hand_computed_healthy_account() -> None:
    h = evaluate(book(6000), PARAMS, prices(), CFG, NOW)
    # collateral 6000 + 6000; weighted 6000*0.80 + 6000*0.75 = 9300; debt 6000
    assert h.collateral_value == D(12000)
    assert h.weighted_collateral == D(9300)
    assert h.debt_value == D(6000)
    assert h.factor == D("1.55")
    assert h.status is Tier.HEALTHY
    # capacity 6000*0.75 + 6000*0.70 - 6000
    assert h.borrow_capacity == D(2700)
    # collateral prices x (1 - d) so that 9300 (1 - d) = 6000
    assert h.price_drop_to_liquidation is not None
    assert abs(h.price_drop_to_liquidation - (1 - D(6000) / D(9300))) <= D("1e-18")
    assert h.max_repay_value == 0
    assert h.seizures == ()


def test_liquidation_with_half_close_factor_and_bonus() -> None:
    h = evaluate(book(9500), PARAMS, prices(), CFG, NOW)
    assert h.status is Tier.LIQUIDATION
    assert h.factor is not None
    assert D("0.95") < h.factor < 1
    assert h.max_repay_value == D(4750)
    eth, wbtc = sorted(h.seizures, key=lambda s: s.asset)
    assert eth.seize_value == D("4987.5")  # 4750 x 1.05
    assert eth.seize_units == 1_662_500_000_000_000_000  # 4987.5 / 3000 ETH
    assert wbtc.seize_value == D(5225)  # 4750 x 1.10
    assert wbtc.seize_units == 8_708_333  # floor(5225 / 60000 x 1e8)


def test_liquidation_full_close_factor_caps_at_collateral() -> None:
    h = evaluate(book(10000), PARAMS, prices(), CFG, NOW)  # factor 0.93
    assert h.max_repay_value == D(10000)
    eth = next(s for s in h.seizures if s.asset == "ETH")
    assert eth.seize_value == D(6000)
    assert eth.seize_units == 2 * 10**18
    assert abs(eth.repay_value - D(6000) / D("1.05")) <= D("1e-18")
    assert h.borrow_capacity == 0


def test_max_repay_is_per_debt_asset_as_in_aave() -> None:
    """Aave v3 caps one liquidation at close factor x the debt of the asset repaid, not of
    the whole account: with 6,000 USDC and 3,500 DAI of debt (factor 0.979, close factor
    0.5) a liquidator may repay 3,000 USDC or 1,750 DAI, never 4,750 of either."""
    ps = [
        Position("ETH", 2 * 10**18, 0, 18),
        Position("WBTC", 10_000_000, 0, 8),
        Position("USDC", 0, 6000 * 10**6, 6),
        Position("DAI", 0, 3500 * 10**18, 18),
    ]
    h = evaluate(ps, PARAMS, prices(), CFG, NOW)
    assert h.status is Tier.LIQUIDATION
    assert h.factor is not None
    assert D("0.95") < h.factor < 1
    repays = {r.asset: r for r in h.repays}
    assert set(repays) == {"USDC", "DAI"}
    assert repays["USDC"].close_factor == D("0.5")
    assert repays["USDC"].max_repay_value == D(3000)
    assert repays["USDC"].max_repay_units == 3000 * 10**6
    assert repays["DAI"].max_repay_value == D(1750)
    assert repays["DAI"].max_repay_units == 1750 * 10**18
    assert h.max_repay_value == D(3000)  # the largest single liquidation
    pairs = {(s.debt_asset, s.asset): s for s in h.seizures}
    assert set(pairs) == {("USDC", "ETH"), ("USDC", "WBTC"), ("DAI", "ETH"), ("DAI", "WBTC")}
    assert pairs[("DAI", "ETH")].seize_value == D("1837.5")  # 1750 x 1.05
    assert pairs[("USDC", "WBTC")].seize_value == D(3300)  # 3000 x 1.10
    # at or below 0.95 the close factor is 100 % of each debt asset
    deeper = evaluate(ps, PARAMS, prices(ETH="2500"), CFG, NOW)  # 8500 / 9500 = 0.89
    assert {r.asset: r.max_repay_value for r in deeper.repays} == {
        "USDC": D(6000),
        "DAI": D(3500),
    }


def test_collateral_with_zero_liquidation_threshold_is_never_seized() -> None:
    ps = [*book(9500), Position("GOV", 1000 * 10**18, 0, 18)]  # 10,000 USD of GOV
    h = evaluate(ps, PARAMS, prices(), CFG, NOW)
    assert h.status is Tier.LIQUIDATION  # GOV adds value but no weight
    assert h.collateral_value == D(22000)
    assert h.weighted_collateral == D(9300)
    assert {s.asset for s in h.seizures} == {"ETH", "WBTC"}


def test_future_dated_price_beyond_the_skew_is_not_usable() -> None:
    """A price stamped in the future used to be fresh for ever (now - time < 0)."""
    p = prices()
    p["ETH"] = Price("ETH", D(3000), NOW + CFG.max_future_skew + timedelta(seconds=1))
    h = evaluate(book(6000), PARAMS, p, CFG, NOW)
    assert h.status is Tier.UNKNOWN_PRICE
    assert h.stale_prices == ("ETH",)
    p["ETH"] = Price("ETH", D(3000), NOW + CFG.max_future_skew)  # within the skew: usable
    assert evaluate(book(6000), PARAMS, p, CFG, NOW).status is Tier.HEALTHY


def test_no_debt_is_healthy_with_infinite_factor() -> None:
    h = evaluate([Position("ETH", 10**18, 0, 18)], PARAMS, prices(), CFG, NOW)
    assert h.status is Tier.HEALTHY
    assert h.factor is None
    assert h.infinite
    assert h.price_drop_to_liquidation is None


def _boundary(debt: D) -> Tier:
    # 1375 USDC x 0.80 = 1100 weighted; debt in DAI (18 decimals)
    ps = [
        Position("USDC", 1375 * 10**6, 0, 6),
        Position("DAI", 0, int(debt * 10**18), 18),
    ]
    return evaluate(ps, PARAMS, prices(), CFG, NOW).status


@pytest.mark.parametrize(
    ("debt", "tier"),
    [
        ("880", Tier.HEALTHY),  # exactly 1.25
        ("880.000000000000000001", Tier.WARNING),
        ("1000", Tier.WARNING),  # exactly 1.10
        ("1000.000000000000000001", Tier.MARGIN_CALL),
        ("1100", Tier.MARGIN_CALL),  # exactly 1.00
        ("1100.000000000000000001", Tier.LIQUIDATION),
    ],
)
def test_each_tier_boundary(debt: str, tier: Tier) -> None:
    assert _boundary(D(debt)) is tier


def test_missing_and_stale_prices_give_unknown_never_liquidation() -> None:
    p = prices()
    del p["WBTC"]
    h = evaluate(book(20000), PARAMS, p, CFG, NOW)
    assert h.status is Tier.UNKNOWN_PRICE
    assert h.missing_prices == ("WBTC",)
    assert h.max_repay_value == 0
    assert h.factor is None
    p = prices()
    p["ETH"] = Price("ETH", D(3000), NOW - HOUR - timedelta(seconds=1))
    h = evaluate(book(20000), PARAMS, p, CFG, NOW)
    assert h.status is Tier.UNKNOWN_PRICE
    assert h.stale_prices == ("ETH",)
    p["ETH"] = Price("ETH", D(3000), NOW - HOUR)  # exactly max age: still fresh
    assert evaluate(book(20000), PARAMS, p, CFG, NOW).status is Tier.LIQUIDATION


def test_hysteresis_improves_only_past_the_margin() -> None:
    d = D(1000)
    # previous warning; 1.26 is above 1.25 but below 1.25 + 0.02
    assert with_hysteresis(Tier.WARNING, D("1260"), d, CFG) is Tier.WARNING
    assert with_hysteresis(Tier.WARNING, D("1270"), d, CFG) is Tier.HEALTHY
    # worsening is immediate
    assert with_hysteresis(Tier.HEALTHY, D("1249.999"), d, CFG) is Tier.WARNING
    # from liquidation at 1.11: margin_call bound 1.00+0.02 cleared, warning 1.12 not
    assert with_hysteresis(Tier.LIQUIDATION, D("1110"), d, CFG) is Tier.MARGIN_CALL
    assert with_hysteresis(None, D("1260"), d, CFG) is Tier.HEALTHY


def _h(factor: str) -> object:
    ps = [Position("USDC", 10**12, 0, 6), Position("DAI", 0, 10**18, 18)]
    # weighted = 10**6 x 0.8 = 800000 USD; pick a USDC price giving the factor with debt 1
    price = D(factor) / D(800000)
    return evaluate(ps, PARAMS, prices(USDC=str(price)), CFG, NOW)


def test_decide_events_hysteresis_reminders_and_episodes() -> None:
    s = State()
    d = decide(s, _h("1.5"), CFG, NOW)  # type: ignore[arg-type]
    assert d.events == ()
    assert d.state.status is Tier.HEALTHY
    assert d.snapshot == "tier_change"
    s = d.state
    d = decide(s, _h("1.2"), CFG, NOW)  # type: ignore[arg-type]
    assert d.events == ("margin.tier_changed",)
    assert d.to_tier is Tier.WARNING
    s = d.state
    for f in ("1.26", "1.24", "1.26"):  # hovering: no flapping
        d = decide(s, _h(f), CFG, NOW)  # type: ignore[arg-type]
        assert d.events == ()
        s = d.state
    d = decide(s, _h("1.05"), CFG, NOW + timedelta(minutes=1))  # type: ignore[arg-type]
    assert d.events == ("margin.tier_changed",)
    assert d.to_tier is Tier.MARGIN_CALL
    s = d.state
    d = decide(s, _h("1.05"), CFG, NOW + timedelta(minutes=30))  # type: ignore[arg-type]
    assert d.events == ()
    d = decide(s, _h("1.05"), CFG, NOW + timedelta(minutes=61))  # type: ignore[arg-type]
    assert d.events == ("margin.reminder",)
    s = d.state
    unknown = evaluate(book(1), PARAMS, {}, CFG, NOW)
    d = decide(s, unknown, CFG, NOW + HOUR * 2)
    assert d.events == ("margin.price_unavailable",)
    assert d.state.known_tier is Tier.MARGIN_CALL
    s = d.state
    for k in range(3):  # one event per episode, not per tick
        d = decide(s, unknown, CFG, NOW + HOUR * 2 + timedelta(minutes=k + 1))
        assert d.events == ()
    # prices back, same tier as before the outage: no tier event
    d = decide(s, _h("1.05"), CFG, NOW + HOUR * 2 + timedelta(minutes=10))  # type: ignore[arg-type]
    assert d.events == ()
    assert d.state.status is Tier.MARGIN_CALL
    assert d.snapshot == "tier_change"
    # but a different tier after the outage is a tier change from the last known tier
    d = decide(s, _h("0.9"), CFG, NOW + HOUR * 2 + timedelta(minutes=10))  # type: ignore[arg-type]
    assert d.events == ("margin.tier_changed",)
    assert d.from_tier is Tier.MARGIN_CALL


amounts = st.integers(min_value=0, max_value=10**30)
price_st = st.decimals(min_value=D("0.0001"), max_value=D("100000"), places=4)


@settings(max_examples=200, deadline=None)
@given(
    coll_eth=amounts,
    coll_btc=st.integers(min_value=0, max_value=10**12),
    debt=st.integers(min_value=1, max_value=10**15),
    eth=price_st,
    btc=price_st,
    rise=st.decimals(min_value=D("0"), max_value=D("1000"), places=6),
    which=st.sampled_from(["ETH", "WBTC"]),
)
def test_factor_never_decreases_when_a_collateral_price_rises(
    coll_eth: int, coll_btc: int, debt: int, eth: D, btc: D, rise: D, which: str
) -> None:
    ps = [
        Position("ETH", coll_eth, 0, 18),
        Position("WBTC", coll_btc, 0, 8),
        Position("USDC", 0, debt, 6),
    ]
    before = prices(ETH=str(eth), WBTC=str(btc))
    after = dict(before)
    after[which] = Price(which, before[which].price + rise, NOW)
    h0 = evaluate(ps, PARAMS, before, CFG, NOW)
    h1 = evaluate(ps, PARAMS, after, CFG, NOW)
    assert h0.factor is not None
    assert h1.factor is not None
    assert h1.factor >= h0.factor
    ladder = [Tier.HEALTHY, Tier.WARNING, Tier.MARGIN_CALL, Tier.LIQUIDATION]
    assert ladder.index(h1.status) <= ladder.index(h0.status)
