"""The disputed state of the escrow state machine (pure rules; the chain path is in
test_relayer.py)."""

from __future__ import annotations

from fusion_prime.settlement import domain
from fusion_prime.settlement.domain import Anomaly, Applied, ChainRef

PAYER, PAYEE, ARBITER, OTHER = ("0x" + c * 40 for c in "abcd")
ESCROW = "0x" + "e" * 40


def _ref(n: int) -> ChainRef:
    return ChainRef(n, 0, 1, "0x" + f"{n:064x}")


def _open() -> domain.EscrowState:
    deployed = domain.Deployed(_ref(1), ESCROW, PAYER, PAYEE, ARBITER, "0x" + "0" * 40, 18,
                               10**18, 0, 2)  # fmt: skip
    out = domain.apply(None, deployed)
    assert isinstance(out, Applied)
    return out.state


def _disputed() -> domain.EscrowState:
    out = domain.apply(_open(), domain.Disputed(_ref(2), ESCROW, PAYEE))
    assert isinstance(out, Applied)
    assert (out.from_status, out.to_status) == ("created", "disputed")
    assert out.details == {"disputed_by": PAYEE, "role": "payee"}
    return out.state


def test_only_the_payer_or_payee_disputes_and_only_once() -> None:
    for who in (ARBITER, OTHER):
        out = domain.apply(_open(), domain.Disputed(_ref(2), ESCROW, who))
        assert isinstance(out, Anomaly)
        assert out.reason == "disputer_not_allowed"
    again = domain.apply(_disputed(), domain.Disputed(_ref(3), ESCROW, PAYER))
    assert isinstance(again, Anomaly)
    assert again.reason == "already_disputed"


def test_no_approval_or_arbiter_change_while_disputed_then_the_arbiter_decides() -> None:
    state = _disputed()
    for event in (
        domain.Approved(_ref(3), ESCROW, PAYER),
        domain.ArbiterChanged(_ref(3), ESCROW, OTHER),
    ):
        out = domain.apply(state, event)
        assert isinstance(out, Anomaly)
        assert out.reason == "while_disputed"
    released = domain.apply(state, domain.Released(_ref(4), ESCROW))
    assert isinstance(released, Applied)
    assert released.to_status == "released"
    assert released.details == {"dispute": "resolved for the payee"}
    refunded = domain.apply(state, domain.Refunded(_ref(4), ESCROW))
    assert isinstance(refunded, Applied)
    assert refunded.to_status == "refunded"
    after = domain.apply(released.state, domain.Disputed(_ref(5), ESCROW, PAYER))
    assert isinstance(after, Anomaly)
    assert after.reason == "after_terminal"
