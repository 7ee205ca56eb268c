"""Pure rules of the alert service: what an event means, who is told, how, and when.

No I/O here. The handler loads preferences, contacts and the open notifications, asks
`plan` what each event causes, and stores the answer before anything is sent.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Channel(StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"
    SLACK = "slack"
    SMS = "sms"


class Kind(StrEnum):
    WARNING = "warning"
    MARGIN_CALL = "margin_call"
    LIQUIDATION = "liquidation"
    REMINDER = "reminder"
    PRICE_UNAVAILABLE = "price_unavailable"


class Status(StrEnum):
    PENDING = "pending"
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # only where the provider confirms delivery
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # quiet hours, dedupe, minimum interval: with the reason
    NO_RECIPIENT = "no_recipient"  # nobody to tell: stored, visible, not dropped


# the margin ladder of the risk engine; an event moving up it is an escalation
TIER_RANK = {"healthy": 0, "warning": 1, "margin_call": 2, "liquidation": 3}
# kinds that fall over to the recipient's next channel when a channel fails for good
FAILOVER_KINDS = frozenset({Kind.MARGIN_CALL, Kind.LIQUIDATION})
# kinds whose reminders / tier share the failover rule (a reminder of a margin call)
FAILOVER_TIERS = frozenset({"margin_call", "liquidation"})

ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
# deliberately plain: one @, a dotted domain, no spaces or control characters
EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@dataclass(frozen=True)
class Classified:
    """What an `alerts.margin.v1` event is for people (None from `classify`: nothing)."""

    kind: Kind
    tier: str
    from_tier: str | None
    escalation: bool


def classify(event_type: str, data: Mapping[str, Any]) -> Classified | None:
    """Map the risk engine's event to a notification kind.

    A tier change to `healthy` (a recovery) is not one of the kinds people subscribe to:
    it is stored as an event but notifies nobody.
    """
    to_tier = str(data.get("to_tier") or "")
    from_tier = data.get("from_tier")
    if event_type == "margin.tier_changed":
        if to_tier not in (Kind.WARNING, Kind.MARGIN_CALL, Kind.LIQUIDATION):
            return None
        # escalation: up the ladder into margin_call or liquidation; entering warning (from
        # healthy, perhaps for the third time in a flapping hour) is not one, it is folded
        up = to_tier != Kind.WARNING and TIER_RANK[to_tier] > TIER_RANK.get(
            str(from_tier or "healthy"), 0
        )
        return Classified(Kind(to_tier), to_tier, from_tier, up)
    if event_type == "margin.reminder":
        return Classified(Kind.REMINDER, to_tier or "unknown", from_tier, False)
    if event_type == "margin.price_unavailable":
        return Classified(Kind.PRICE_UNAVAILABLE, "unknown_price", from_tier, False)
    return None


# -- validation (the API names the field; these say what is wrong) --------------------


def email_problem(address: str) -> str | None:
    if not EMAIL_RE.match(address) or ".." in address or len(address) > 254:
        return "is not an email address"
    return None


def phone_problem(number: str) -> str | None:
    if not E164_RE.match(number):
        return "must be a phone number in E.164 form, e.g. +14155550100"
    return None


def url_problem(url: str, *, allow_http: bool) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https URL"
    if parts.scheme == "http" and not allow_http:
        return "must be https (plain http is accepted only in development and test)"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def timezone_problem(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not an IANA time zone, e.g. Europe/Zurich"
    return None


def in_quiet_hours(at: datetime, tz: str, start: time | None, end: time | None) -> bool:
    """Is `at` inside [start, end) in the recipient's zone? Wraps over midnight."""
    if start is None or end is None or start == end:
        return False
    local = at.astimezone(ZoneInfo(tz)).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(at: datetime, tz: str, start: time | None, end: time | None) -> datetime | None:
    """When the quiet hours that `at` falls in end (None: `at` is not in quiet hours)."""
    if start is None or end is None or not in_quiet_hours(at, tz, start, end):
        return None
    zone = ZoneInfo(tz)
    local = at.astimezone(zone)
    day = local.date()
    if local.time().replace(tzinfo=None) >= end:  # wrapped over midnight: ends tomorrow
        day += timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone)


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random, so a burst of
    failures does not retry in lockstep. `attempts` = failed attempts so far (>= 1)."""
    raw = min(base * 2 ** max(attempts - 1, 0), cap)
    return float(raw / 2 + (rng or random).uniform(0, raw / 2))


# -- planning --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    channel: Channel
    address: str
    position: int


@dataclass(frozen=True)
class Contact:
    id: uuid.UUID
    account_id: str
    name: str
    timezone: str
    endpoints: tuple[Endpoint, ...]

    def endpoint(self, channel: Channel) -> Endpoint | None:
        return next((e for e in self.endpoints if e.channel == channel), None)


@dataclass(frozen=True)
class Preferences:
    account_id: str
    kinds: frozenset[Kind]
    channels: tuple[Channel, ...]
    recipients: tuple[uuid.UUID, ...] | None  # None: every contact of the account
    quiet_start: time | None = None
    quiet_end: time | None = None
    quiet_bypass: frozenset[Kind] = frozenset({Kind.LIQUIDATION})
    min_interval: Mapping[str, float] = field(default_factory=dict)
    dedupe_window: float | None = None  # None: the service default


OpenKey = tuple[str, str, str, uuid.UUID, str]  # account, kind, tier, contact, channel
LastKey = tuple[str, str, uuid.UUID, str]  # account, kind, contact, channel


@dataclass
class Memory:
    """What earlier notifications tell the planner; updated as events are planned, so the
    second event of a batch sees the first one's notification."""

    open: dict[OpenKey, tuple[uuid.UUID, datetime]] = field(default_factory=dict)
    last: dict[LastKey, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Planned:
    """One notification to store (status pending, suppressed or no_recipient)."""

    id: uuid.UUID
    contact_id: uuid.UUID | None
    channel: Channel | None
    status: Status
    reason: str | None = None
    folded_into: uuid.UUID | None = None
    not_before: datetime | None = None  # held (quiet hours): sent at that time


def plan(
    account_id: str,
    c: Classified,
    at: datetime,
    prefs: Preferences | None,
    contacts: Sequence[Contact],
    memory: Memory,
    default_window: float,
) -> list[Planned]:
    """Notifications one event causes, one per recipient and channel (never none: an
    event nobody is told about is stored as `no_recipient` or `suppressed`)."""
    if prefs is None:
        return [Planned(uuid.uuid4(), None, None, Status.NO_RECIPIENT, "no preferences")]
    if c.kind not in prefs.kinds:
        return [
            Planned(
                uuid.uuid4(),
                None,
                None,
                Status.SUPPRESSED,
                f"kind {c.kind.value} not in the account's preferences",
            )
        ]
    wanted = [ct for ct in contacts if prefs.recipients is None or ct.id in set(prefs.recipients)]
    out: list[Planned] = []
    window = timedelta(seconds=prefs.dedupe_window if prefs.dedupe_window is not None
                       else default_window)  # fmt: skip
    for ct in wanted:
        for ch in prefs.channels:
            if ct.endpoint(ch) is None:
                continue
            out.append(_one(account_id, c, at, prefs, ct, ch, memory, window))
    if not out:
        reason = "no contact with an enabled channel"
        return [Planned(uuid.uuid4(), None, None, Status.NO_RECIPIENT, reason)]
    return out


def _one(
    account_id: str,
    c: Classified,
    at: datetime,
    prefs: Preferences,
    ct: Contact,
    ch: Channel,
    memory: Memory,
    window: timedelta,
) -> Planned:
    nid = uuid.uuid4()
    okey: OpenKey = (account_id, c.kind.value, c.tier, ct.id, ch.value)
    lkey: LastKey = (account_id, c.kind.value, ct.id, ch.value)
    opened = memory.open.get(okey)
    if not c.escalation and opened is not None and at - opened[1] < window:
        return Planned(
            nid, ct.id, ch, Status.SUPPRESSED, f"dedupe: folded into {opened[0]}", opened[0]
        )
    interval = prefs.min_interval.get(c.kind.value, 0.0)
    last = memory.last.get(lkey)
    if not c.escalation and last is not None and (at - last).total_seconds() < interval:
        return Planned(nid, ct.id, ch, Status.SUPPRESSED, f"minimum interval {interval:g} s")
    memory.open[okey] = (nid, at)
    memory.last[lkey] = at
    if c.kind not in prefs.quiet_bypass:
        held = quiet_hours_end(at, ct.timezone, prefs.quiet_start, prefs.quiet_end)
        if held is not None:
            # held, not dropped: pending until the quiet hours end; later events of the
            # window fold into it, so the recipient gets one message with the latest values
            reason = f"held for quiet hours until {held.isoformat()}"
            return Planned(nid, ct.id, ch, Status.PENDING, reason, not_before=held)
    return Planned(nid, ct.id, ch, Status.PENDING)


def next_failover(contact: Contact, used: set[str]) -> Endpoint | None:
    """The recipient's next channel (in their order) not yet tried for this event."""
    return next((e for e in contact.endpoints if e.channel.value not in used), None)
