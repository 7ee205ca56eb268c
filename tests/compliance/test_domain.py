"""Pure rules at their boundaries: AML thresholds, business days, structuring, signatures,
the KYC state machine, normalisation, list parsing and the fuzzy matcher."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from fusion_prime.compliance.domain import (
    AmlRules,
    KycStatus,
    PastTransaction,
    RiskLevel,
    can_transition,
    evaluate_aml,
    provider_path,
)
from fusion_prime.compliance.sanctions.matcher import ListedName, NameIndex
from fusion_prime.compliance.sanctions.normalise import normalise_address, normalise_name
from fusion_prime.compliance.sanctions.parsers import ListFormatError, parse_ftm, parse_sdn
from fusion_prime.platform.signing import SignatureError
from fusion_prime.platform.signing import signature as sign_webhook
from fusion_prime.platform.signing import verify_header as verify_webhook_signature
from tests.compliance.conftest import FIXTURES

NY = ZoneInfo("America/New_York")
RULES = AmlRules(version=1)
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=NY)


def rules_fired(amount: str, history: list[PastTransaction], at: datetime = NOON) -> set[str]:
    return {f.rule for f in evaluate_aml(RULES, Decimal(amount), at, history).fired}


def test_single_threshold_boundary() -> None:
    assert rules_fired("9999.99", []) == set()
    below = evaluate_aml(RULES, Decimal("9999.99"), NOON, [])
    assert below.level is RiskLevel.LOW
    at = evaluate_aml(RULES, Decimal("10000.00"), NOON, [])
    assert [f.rule for f in at.fired] == ["single_threshold"]
    assert at.level is RiskLevel.MEDIUM
    assert "10,000.00 USD" in at.fired[0].explanation


def test_daily_aggregate_within_one_business_day() -> None:
    earlier = [PastTransaction(Decimal("6000.00"), NOON - timedelta(hours=3))]
    assert "daily_aggregate" in rules_fired("4000.00", earlier)
    assert "daily_aggregate" not in rules_fired("3999.99", earlier)


def test_aggregate_is_not_split_at_new_york_midnight() -> None:
    """Issue 17: 23:30 and 00:30 were two business days, so 6,000 + 5,000 an hour apart
    never aggregated. The rolling 24 h total catches what the calendar day splits."""
    late = datetime(2026, 12, 1, 23, 30, tzinfo=NY)
    after_midnight = datetime(2026, 12, 2, 0, 30, tzinfo=NY)
    history = [PastTransaction(Decimal("6000.00"), late)]
    result = evaluate_aml(RULES, Decimal("5000.00"), after_midnight, history)
    (rule,) = result.fired
    assert rule.rule == "daily_aggregate"
    assert "within 24 h" in rule.explanation
    assert result.business_day.isoformat() == "2026-12-02"
    # the rolling window ends after 24 h
    next_day = late + timedelta(hours=24)
    assert "daily_aggregate" not in rules_fired("5000.00", history, next_day)
    same_day = datetime(2026, 12, 1, 23, 59, tzinfo=NY)
    assert "daily_aggregate" in rules_fired("5000.00", history, same_day)


def test_far_past_occurred_at_is_flagged() -> None:
    reported = NOON + timedelta(hours=RULES.late_report_hours, seconds=1)
    late = evaluate_aml(RULES, Decimal("10.00"), NOON, [], reported_at=reported)
    assert [f.rule for f in late.fired] == ["late_report"]
    assert late.level is RiskLevel.MEDIUM  # reviewed by a person, not silently stored
    on_time = NOON + timedelta(hours=RULES.late_report_hours)
    assert evaluate_aml(RULES, Decimal("10.00"), NOON, [], reported_at=on_time).fired == []


def test_structuring_needs_three_in_band_within_24h() -> None:
    two = [
        PastTransaction(Decimal("9500.00"), NOON - timedelta(hours=20)),
        PastTransaction(Decimal("8000.00"), NOON - timedelta(hours=5)),
    ]
    assert "structuring" in rules_fired("9999.99", two)
    assert "structuring" not in rules_fired("7999.99", two)  # below the band
    assert "structuring" not in rules_fired("9000.00", two[1:])  # only two in band
    stale = [PastTransaction(Decimal("9500.00"), NOON - timedelta(hours=24)), two[1]]
    assert "structuring" not in rules_fired("9000.00", stale)  # first one is 24 h old


def test_high_is_reachable() -> None:
    history = [
        PastTransaction(Decimal("9100.00"), NOON - timedelta(hours=2)),
        PastTransaction(Decimal("9200.00"), NOON - timedelta(hours=1)),
    ]
    result = evaluate_aml(RULES, Decimal("9300.00"), NOON, history)
    assert {f.rule for f in result.fired} == {"structuring", "daily_aggregate"}
    assert result.level is RiskLevel.HIGH
    assert result.score == 100
    sanctioned = evaluate_aml(RULES, Decimal("10.00"), NOON, [], ["listed"])
    assert sanctioned.level is RiskLevel.HIGH


def test_velocity() -> None:
    history = [PastTransaction(Decimal("10"), NOON - timedelta(minutes=m)) for m in (1, 2, 3, 4)]
    assert "velocity" in rules_fired("10", history)
    assert "velocity" not in rules_fired("10", history[:3])
    # transactions after this one's time do not count against it
    later = [PastTransaction(Decimal("10"), NOON + timedelta(minutes=1))] * 4
    assert "velocity" not in rules_fired("10", later)


def test_rule_set_validation() -> None:
    with pytest.raises(ValueError, match="unknown rule keys"):
        AmlRules.from_json(2, {"single_treshold": "5"})
    with pytest.raises(ValueError, match="high_score"):
        AmlRules.from_json(2, {"high_score": 500})
    with pytest.raises(ValueError, match="floats"):
        AmlRules.from_json(2, {"single_threshold": 5000.5})
    rules = AmlRules.from_json(2, {"daily_threshold": "3000", "business_timezone": "Europe/Paris"})
    assert rules.daily_threshold == Decimal("3000")
    assert rules.single_threshold == Decimal("10000")


def test_webhook_signature() -> None:
    body = b'{"data": 1}'
    now = 1_800_000_000
    good = f"t={now},v1={sign_webhook('s3cret', now, body)}"
    assert verify_webhook_signature(good, body, "s3cret", now=now + 299, tolerance=300) == now
    rotated = f"t={now},v1={'0' * 64} t={now},v1={sign_webhook('s3cret', now, body)}"
    assert verify_webhook_signature(rotated, body, "s3cret", now=now, tolerance=300) == now
    cases = {
        None: "missing",
        "": "missing",
        f"t={now},v1={'0' * 64}": "mismatch",
        f"v1={sign_webhook('s3cret', now, body)}": "timestamp",
    }
    for header, reason in cases.items():
        with pytest.raises(SignatureError, match=reason):
            verify_webhook_signature(header, body, "s3cret", now=now, tolerance=300)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_webhook_signature(good, body, "s3cret", now=now + 301, tolerance=300)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_webhook_signature(good, body + b" ", "s3cret", now=now, tolerance=300)


def test_kyc_state_machine() -> None:
    assert can_transition(KycStatus.PENDING, KycStatus.IN_REVIEW)
    assert not can_transition(KycStatus.PENDING, KycStatus.VERIFIED)
    assert not can_transition(KycStatus.VERIFIED, KycStatus.REJECTED)
    assert can_transition(KycStatus.NEEDS_MORE_INFO, KycStatus.IN_REVIEW)
    assert provider_path(KycStatus.PENDING, KycStatus.VERIFIED) == [
        KycStatus.IN_REVIEW,
        KycStatus.VERIFIED,
    ]
    assert provider_path(KycStatus.VERIFIED, KycStatus.REJECTED) is None
    assert provider_path(KycStatus.IN_REVIEW, KycStatus.IN_REVIEW) == []


def test_normalisation() -> None:
    assert normalise_name("MÜLLER-SCHÄFER, Jürgen") == "jurgen muller schafer"
    assert normalise_name("Jürgen Müller Schäfer") == normalise_name("SCHAFER, Jurgen MULLER")
    evm = "0x7F367cC41522cE07553e823bf3be79A889DEbe1B"
    assert normalise_address(evm) == evm.lower()
    assert normalise_address(" bc1QD7LQG0H3N5HYVZQSF6DNV0C2GVSY4ZQWLD4SQZ ") == (
        "bc1qd7lqg0h3n5hyvzqsf6dnv0c2gvsy4zqwld4sqz"
    )
    legacy = "1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR"
    assert normalise_address(legacy) == legacy  # base58 is case-sensitive


def test_parse_sdn_fixture() -> None:
    parsed = parse_sdn(open(FIXTURES / "sdn.csv", encoding="utf-8", newline=""))
    assert [e.source_id for e in parsed.entities] == ["10001", "10002", "10003", "10004", "10005"]
    first = parsed.entities[0]
    assert first.programs == ["CYBER2", "RUSSIA-EO14024"]
    assert first.crypto == [
        ("XBT", "1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR"),
        ("ETH", "0x7F367cC41522cE07553e823bf3be79A889DEbe1B"),
    ]
    assert parsed.entities[1].schema == "entity"  # "-0-" type is an entity
    assert parsed.entities[2].remarks is None
    assert parsed.entities[3].data["vessel_flag"] == "Malta"


def test_crypto_remarks_with_network() -> None:
    row = (
        '7,"X",-0- ,"CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,"Digital Currency Address - '
        "USDT TRC20 TXm8aFhLMSGb4YHy4fdJ8dP1rtmo2WM8xY; alt. Digital Currency Address - XBT "
        '1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR."\n'
    )
    assert parse_sdn([row]).entities[0].crypto == [
        ("USDT", "TXm8aFhLMSGb4YHy4fdJ8dP1rtmo2WM8xY"),
        ("XBT", "1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR"),
    ]


def test_parse_errors_name_the_line() -> None:
    lines = [
        '1,"A",-0- ,"P",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n',
        '2,"B",-0- ,"P",-0- ,-0- \n',
    ]
    with pytest.raises(ListFormatError) as exc:
        parse_sdn(lines)
    assert exc.value.line == 2
    assert "expected 12 columns" in str(exc.value)
    with pytest.raises(ListFormatError) as exc:
        parse_ftm(['{"id": "a", "schema": "Person", "properties": {"name": ["X"]}}\n', "{oops\n"])
    assert exc.value.line == 2


def test_parse_ftm_fixture() -> None:
    parsed = parse_ftm(open(FIXTURES / "opensanctions.jsonl", encoding="utf-8"))
    by_id = {e.source_id: e for e in parsed.entities}
    assert set(by_id) == {"os-p-okonkwo", "os-o-crimson"}
    assert by_id["os-o-crimson"].crypto == [("ETH", "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01")]
    assert ("Amara Bello", "alias") in by_id["os-p-okonkwo"].names
    assert parsed.skipped == 2
    assert str(parsed.latest_change) == "2026-11-20"


def test_matcher_blocking_agrees_with_full_scan() -> None:
    names = [
        ListedName(1, "KOVALENKO, Dmitri Ivanovich", "primary", "L", "1"),
        ListedName(1, "KOVALENKO, Dmitry", "aka", "L", "1"),
        ListedName(2, "ORION MARITIME HOLDINGS LTD.", "primary", "L", "2"),
        ListedName(3, "Maria Gonzalez", "primary", "L", "3"),
    ]
    index = NameIndex(names)
    hits = index.search("Dmitry Kovalenko", 0.85)
    assert [(m.entry.entity_id, m.entry.kind, m.score) for m in hits] == [(1, "aka", 1.0)]
    assert index.search("Dmitri Kowalenko", 0.85)[0].score == 1.0  # w/v: one spelling key
    typo = index.search("Dmitri Kovalnko", 0.85)
    assert typo
    assert typo[0].entry.entity_id == 1
    assert 0.85 <= typo[0].score < 1
    assert index.search("Orion Maritime Holdings", 0.85)[0].entry.entity_id == 2
    assert index.search("Peter Smith", 0.85) == []
    for query in ("Dmitri Kowalenko", "Mario Gonsales", "Orion Marine Holding"):
        assert index.search(query, 0.8) == index.search_full_scan(query, 0.8)
