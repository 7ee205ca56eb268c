"""Pure compliance rules: the KYC state machine, webhook signatures, AML rule evaluation
and the audit hash chain. No I/O here, so every rule can be tested at its boundaries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# -- KYC -----------------------------------------------------------------------------


class KycStatus(StrEnum):
    PENDING = "pending"
    IN_REVIEW = "in_review"
    VERIFIED = "verified"
    REJECTED = "rejected"
    NEEDS_MORE_INFO = "needs_more_info"


# verified and rejected are final: a changed identity needs a new case (and a new audit trail).
KYC_TRANSITIONS: Mapping[KycStatus, frozenset[KycStatus]] = {
    KycStatus.PENDING: frozenset({KycStatus.IN_REVIEW}),
    KycStatus.IN_REVIEW: frozenset(
        {KycStatus.VERIFIED, KycStatus.REJECTED, KycStatus.NEEDS_MORE_INFO}
    ),
    KycStatus.NEEDS_MORE_INFO: frozenset({KycStatus.IN_REVIEW}),
    KycStatus.VERIFIED: frozenset(),
    KycStatus.REJECTED: frozenset(),
}


def can_transition(current: KycStatus, target: KycStatus) -> bool:
    return target in KYC_TRANSITIONS[current]


def provider_path(current: KycStatus, target: KycStatus) -> list[KycStatus] | None:
    """Steps a provider decision takes from `current` to `target` (None if unreachable).

    A provider may report "approved" for an inquiry we still hold as pending (it never
    sent "completed"); the case then passes through in_review so every step is recorded.
    """
    if current == target:
        return []
    if can_transition(current, target):
        return [target]
    if can_transition(current, KycStatus.IN_REVIEW) and can_transition(KycStatus.IN_REVIEW, target):
        return [KycStatus.IN_REVIEW, target]
    return None


# Persona inquiry events -> our case states.
PROVIDER_EVENTS: Mapping[str, KycStatus] = {
    "inquiry.completed": KycStatus.IN_REVIEW,
    "inquiry.marked-for-review": KycStatus.IN_REVIEW,
    "inquiry.approved": KycStatus.VERIFIED,
    "inquiry.declined": KycStatus.REJECTED,
    "inquiry.failed": KycStatus.NEEDS_MORE_INFO,
    "inquiry.expired": KycStatus.NEEDS_MORE_INFO,
}


# -- AML -----------------------------------------------------------------------------


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class AmlRules:
    """One published version of the AML thresholds (stored as JSON in aml_rule_sets)."""

    version: int
    single_threshold: Decimal = Decimal("10000")
    daily_threshold: Decimal = Decimal("10000")
    business_timezone: str = "America/New_York"
    structuring_min: Decimal = Decimal("8000")
    structuring_max: Decimal = Decimal("10000")  # exclusive: >= max is a single-threshold hit
    structuring_count: int = 3
    structuring_window_hours: int = 24
    velocity_count: int = 5
    velocity_window_minutes: int = 10
    # the daily total also runs over a rolling window, so midnight does not split it
    aggregate_window_hours: int = 24
    # a transaction reported this long after it occurred is flagged for review
    late_report_hours: int = 72
    weights: Mapping[str, int] = field(
        default_factory=lambda: {
            "single_threshold": 50,
            "daily_aggregate": 40,
            "structuring": 60,
            "velocity": 30,
            "sanctions": 100,
            "late_report": 40,
        }
    )
    medium_score: int = 40
    high_score: int = 70

    def to_json(self) -> dict[str, Any]:
        return {
            "single_threshold": str(self.single_threshold),
            "daily_threshold": str(self.daily_threshold),
            "business_timezone": self.business_timezone,
            "structuring_min": str(self.structuring_min),
            "structuring_max": str(self.structuring_max),
            "structuring_count": self.structuring_count,
            "structuring_window_hours": self.structuring_window_hours,
            "velocity_count": self.velocity_count,
            "velocity_window_minutes": self.velocity_window_minutes,
            "aggregate_window_hours": self.aggregate_window_hours,
            "late_report_hours": self.late_report_hours,
            "weights": dict(self.weights),
            "medium_score": self.medium_score,
            "high_score": self.high_score,
        }

    @classmethod
    def from_json(cls, version: int, data: Mapping[str, Any]) -> AmlRules:
        """Validate a rule set; raises ValueError naming the offending key."""
        known = set(cls(version=0).to_json())
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rule keys: {', '.join(sorted(unknown))}")
        base = cls(version=version).to_json()
        merged = {**base, **data}
        try:
            rules = cls(
                version=version,
                single_threshold=_positive_decimal(merged, "single_threshold"),
                daily_threshold=_positive_decimal(merged, "daily_threshold"),
                business_timezone=str(merged["business_timezone"]),
                structuring_min=_positive_decimal(merged, "structuring_min"),
                structuring_max=_positive_decimal(merged, "structuring_max"),
                structuring_count=_positive_int(merged, "structuring_count"),
                structuring_window_hours=_positive_int(merged, "structuring_window_hours"),
                velocity_count=_positive_int(merged, "velocity_count"),
                velocity_window_minutes=_positive_int(merged, "velocity_window_minutes"),
                aggregate_window_hours=_positive_int(merged, "aggregate_window_hours"),
                late_report_hours=_positive_int(merged, "late_report_hours"),
                weights={**base["weights"], **dict(merged["weights"])},
                medium_score=_positive_int(merged, "medium_score"),
                high_score=_positive_int(merged, "high_score"),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed rule set: {exc}") from exc
        if set(rules.weights) != set(base["weights"]):
            raise ValueError(f"weights must name exactly: {', '.join(sorted(base['weights']))}")
        if any(not isinstance(w, int) or w < 0 for w in rules.weights.values()):
            raise ValueError("weights must be non-negative integers")
        if rules.structuring_min >= rules.structuring_max:
            raise ValueError("structuring_min must be below structuring_max")
        if rules.medium_score >= rules.high_score:
            raise ValueError("medium_score must be below high_score")
        if sum(rules.weights.values()) < rules.high_score:
            raise ValueError("weights can never reach high_score: 'high' would be unreachable")
        try:
            ZoneInfo(rules.business_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"business_timezone: unknown zone {rules.business_timezone}") from exc
        return rules

    @property
    def lookback(self) -> timedelta:
        """How far back any rule looks from a transaction (the business day aside)."""
        return max(
            timedelta(hours=self.structuring_window_hours),
            timedelta(hours=self.aggregate_window_hours),
            timedelta(minutes=self.velocity_window_minutes),
        )

    def business_day(self, at: datetime) -> date:
        """The CTR business day: the calendar date of `at` in the configured timezone."""
        return at.astimezone(ZoneInfo(self.business_timezone)).date()


def _positive_decimal(data: Mapping[str, Any], key: str) -> Decimal:
    value = data[key]
    if isinstance(value, float):
        raise ValueError(f"{key}: give amounts as strings, not floats")
    try:
        dec = Decimal(str(value))
    except ArithmeticError as exc:
        raise ValueError(f"{key}: not a decimal") from exc
    if not dec.is_finite() or dec <= 0:
        raise ValueError(f"{key}: must be a positive decimal")
    return dec


def _positive_int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key}: must be a positive integer")
    return value


@dataclass(frozen=True)
class PastTransaction:
    amount: Decimal
    occurred_at: datetime


@dataclass(frozen=True)
class FiredRule:
    rule: str
    weight: int
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "weight": self.weight, "explanation": self.explanation}


@dataclass(frozen=True)
class AmlResult:
    score: int
    level: RiskLevel
    fired: list[FiredRule]
    business_day: date


def _usd(amount: Decimal) -> str:
    return f"{amount:,.2f} USD"


def evaluate_aml(
    rules: AmlRules,
    amount: Decimal,
    occurred_at: datetime,
    history: Sequence[PastTransaction],
    sanctions_reasons: Sequence[str] = (),
    reported_at: datetime | None = None,
) -> AmlResult:
    """Score one transaction against the user's other ones (`history` excludes it).

    `history` must cover at least the business day and `rules.lookback` before
    `occurred_at`; transactions after `occurred_at` are ignored, so the result depends
    only on what had happened by its own time. That makes it independent of the order
    of submission once later arrivals re-score what they precede (service.py does).
    `reported_at` is when we learnt of it (screening time), for the late-report rule.
    """
    fired: list[FiredRule] = []
    w = rules.weights
    if amount >= rules.single_threshold:
        fired.append(
            FiredRule(
                "single_threshold",
                w["single_threshold"],
                f"single transaction of {_usd(amount)} is at or above the "
                f"{_usd(rules.single_threshold)} reporting threshold",
            )
        )
    day = rules.business_day(occurred_at)
    past = [t for t in history if t.occurred_at <= occurred_at]
    same_day = [t for t in past if rules.business_day(t.occurred_at) == day]
    day_total = amount + sum((t.amount for t in same_day), Decimal(0))
    since_a = occurred_at - timedelta(hours=rules.aggregate_window_hours)
    rolling = [t for t in past if t.occurred_at > since_a]
    rolling_total = amount + sum((t.amount for t in rolling), Decimal(0))
    if same_day and day_total >= rules.daily_threshold:
        fired.append(
            FiredRule(
                "daily_aggregate",
                w["daily_aggregate"],
                f"{len(same_day) + 1} transactions total {_usd(day_total)} on business day "
                f"{day.isoformat()} ({rules.business_timezone}), at or above "
                f"{_usd(rules.daily_threshold)}",
            )
        )
    elif rolling and rolling_total >= rules.daily_threshold:
        fired.append(
            FiredRule(
                "daily_aggregate",
                w["daily_aggregate"],
                f"{len(rolling) + 1} transactions total {_usd(rolling_total)} within "
                f"{rules.aggregate_window_hours} h (across business days), at or above "
                f"{_usd(rules.daily_threshold)}",
            )
        )
    in_band = rules.structuring_min <= amount < rules.structuring_max
    if in_band:
        since = occurred_at - timedelta(hours=rules.structuring_window_hours)
        band = [
            t
            for t in past
            if t.occurred_at > since and rules.structuring_min <= t.amount < rules.structuring_max
        ]
        if len(band) + 1 >= rules.structuring_count:
            fired.append(
                FiredRule(
                    "structuring",
                    w["structuring"],
                    f"{len(band) + 1} transactions between {_usd(rules.structuring_min)} and "
                    f"{_usd(rules.structuring_max)} within {rules.structuring_window_hours} h "
                    "(amounts kept just below the reporting threshold)",
                )
            )
    since_v = occurred_at - timedelta(minutes=rules.velocity_window_minutes)
    recent = [t for t in past if t.occurred_at > since_v]
    if len(recent) + 1 >= rules.velocity_count:
        fired.append(
            FiredRule(
                "velocity",
                w["velocity"],
                f"{len(recent) + 1} transactions within {rules.velocity_window_minutes} minutes "
                f"(limit {rules.velocity_count - 1})",
            )
        )
    if reported_at is not None and reported_at - occurred_at > timedelta(
        hours=rules.late_report_hours
    ):
        delay = reported_at - occurred_at
        fired.append(
            FiredRule(
                "late_report",
                w["late_report"],
                f"reported {delay.days} days {delay.seconds // 3600} h after it occurred "
                f"(more than {rules.late_report_hours} h): back-dated transactions are "
                "reviewed",
            )
        )
    if sanctions_reasons:
        fired.append(
            FiredRule(
                "sanctions",
                w["sanctions"],
                "counterparty on a sanctions list: " + "; ".join(sanctions_reasons),
            )
        )
    score = min(100, sum(f.weight for f in fired))
    if score >= rules.high_score:
        level = RiskLevel.HIGH
    elif score >= rules.medium_score:
        level = RiskLevel.MEDIUM
    else:
        level = RiskLevel.LOW
    return AmlResult(score=score, level=level, fired=fired, business_day=day)


# -- audit chain ---------------------------------------------------------------------

GENESIS_HASH = "0" * 64


def audit_time(at: datetime) -> str:
    """A fixed textual form: PostgreSQL keeps microseconds, so the round trip is exact."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def audit_row_document(
    seq: int, occurred_at: datetime, kind: str, subject: str, actor: str, payload: Any
) -> dict[str, Any]:
    return {
        "seq": seq,
        "occurred_at": audit_time(occurred_at),
        "kind": kind,
        "subject": subject,
        "actor": actor,
        "payload": payload,
    }


def chain_hash(prev_hash: str, document: Mapping[str, Any]) -> str:
    """SHA-256 over the previous hash and the row's canonical JSON."""
    return hashlib.sha256((prev_hash + canonical_json(document)).encode()).hexdigest()
