"""A service process whose clock is 5 minutes off (libfaketime), against a true world.

The rule these cases pin: every time a decision depends on, when several processes must
agree on it, is the database server's clock, never the process's. So:

- settlement signs its webhooks with the database's time: a settlement process 5 min off
  still delivers, and a true receiver (300 s tolerance) accepts each on the first
  attempt; the signed `t=` is within seconds of the receiver's clock;
- compliance checks the identity provider's signed timestamps against the database's
  time: a compliance process 5 min off accepts a true provider and refuses a provider
  6 min off (beyond the 300 s tolerance) like a true one would;
- risk partition leases and bus consumer leases are compared with `now()` of the
  database, and the evaluation pass and the price "from the future" check read the
  database's clock: two risk instances, one 5 min off, split the partitions, keep every
  partition with exactly one owner, evaluate each account only by its owner, consume each
  price once, and reject none of the true-time prices.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent
from fusion_prime.platform.signing import SIGNATURE_HEADER
from tests.alerts.conftest import margin_event
from tests.compliance.conftest import persona_event, sign
from tests.e2e.conftest import BUS_ENV, drained, prepare_bus
from tests.harness import DatabaseFactory, ServiceProcess, count_rows, fetch, fetchval
from tests.reliability.contract import SERVICE_SECRETS
from tests.reliability.skew import process_clock_offset, skewed_env
from tests.reliability.system import MARGIN, CaseRow, make_stream, publish, record, system
from tests.risk.conftest import PARAMS, price_event
from tests.risk.test_live import (
    BASE,
    PRICES_SUB,
    _books_match,
    _publish,
    _split,
    _stats,
    random_positions,
    random_tick,
)
from tests.settlement.factory import wait_for
from tests.settlement.receiver import receiver

pytestmark = pytest.mark.timeout(600)

SKEWS = [pytest.param(300, id="plus-5-min"), pytest.param(-300, id="minus-5-min")]
HOOK_TYPES = ["escrow.created", "escrow.approved"]


async def _assert_skewed(base_url: str, seconds: int) -> float:
    """The mechanism is real: the process itself tells the time `seconds` off."""
    offset = await process_clock_offset(base_url)
    assert abs(offset - seconds) < 30, f"process clock offset {offset:.0f} s, wanted {seconds}"
    return offset


@pytest.mark.parametrize("skew", SKEWS)
async def test_settlement_with_a_skewed_clock_signs_webhooks_a_true_receiver_accepts(
    db_factory: DatabaseFactory, log_dir: Path, skew: int
) -> None:
    stream = make_stream(40, 0, 0)
    with receiver() as rx:
        async with system(
            db_factory,
            db_factory,
            log_dir,
            services=("settlement",),
            extra_env={**skewed_env(skew), "SETTLEMENT_WEBHOOK_BATCH": "5"},
        ) as sys_:
            proc = sys_.procs["settlement"]
            offset = await _assert_skewed(proc.base_url, skew)
            async with proc.async_client(timeout=30) as http:
                made = await http.post("/webhooks", json={"url": rx.url, "event_types": HOOK_TYPES})
                assert made.status_code == 201, made.text
                rx.secret = made.json()["secret"]
            started = time.monotonic()
            await publish(sys_.bus, stream.outgoing())
            db = sys_.db["settlement"]
            # one state change per escrow (deployed = created; one approval of two required
            # changes the count, not the status): one delivery each
            expected = len(stream.escrows)

            async def settled() -> bool:
                n = await count_rows(db, "webhook_deliveries", "status <> 'pending'")
                return n >= expected and await count_rows(db, "webhook_deliveries") == n

            await wait_for(settled, timeout=180, interval=0.3)
            recover = time.monotonic() - started
            deliveries = await fetch(
                db, "SELECT status, attempts, event_id::text AS event_id FROM webhook_deliveries"
            )
            attempts = await fetch(db, "SELECT status_code, succeeded, error FROM webhook_attempts")
    with rx.lock:
        requests = list(rx.requests)
    stamped = [int(r.headers["Fusion-Prime-Signature"].split(",")[0][2:]) for r in requests]
    drift = max(abs(t - r.at) for t, r in zip(stamped, requests, strict=True))
    ids = [json.loads(r.body)["id"] for r in requests if r.verified]
    record(
        CaseRow(
            f"clock-skew-webhooks{skew:+d}s",
            f"settlement process clock {skew:+d} s (libfaketime); receiver true, tolerance 300 s",
            expected,
            len(set(ids)),
            expected - len(set(ids)),
            len(ids) - len(set(ids)),
            round(recover, 1),
            f"process clock measured {offset:+.0f} s; signed t= at most {drift:.1f} s "
            f"from the receiver's clock; {len(requests)} requests, "
            f"{sum(not r.verified for r in requests)} refused",
        )
    )
    assert len(deliveries) == expected
    assert {d["status"] for d in deliveries} == {"succeeded"}, deliveries
    # no attempt was refused by the receiver (a signature outside its tolerance is 401);
    # the test receiver (http.server) may drop a connection under the burst: retried
    refused = [dict(a) for a in attempts if a["status_code"] is not None and not a["succeeded"]]
    assert not refused, refused
    assert sum(a["succeeded"] for a in attempts) == expected
    assert all(r.verified for r in requests)
    assert sorted(ids) == sorted(d["event_id"] for d in deliveries)
    # signed with the database's clock, not the process's (which is 5 min off)
    assert drift < 30, drift


@pytest.mark.parametrize("skew", SKEWS)
async def test_compliance_with_a_skewed_clock_judges_provider_signatures_by_the_true_time(
    db_factory: DatabaseFactory, log_dir: Path, skew: int
) -> None:
    secret = SERVICE_SECRETS["compliance"]["KYC_WEBHOOK_SECRET"]
    async with system(
        db_factory, db_factory, log_dir, services=("compliance",), extra_env=skewed_env(skew)
    ) as sys_:
        proc = sys_.procs["compliance"]
        offset = await _assert_skewed(proc.base_url, skew)
        db = sys_.db["compliance"]
        async with proc.async_client(timeout=30) as http:
            for user in ("u-true", "u-4min", "u-6min"):
                r = await http.post("/kyc/cases", json={"user_id": user})
                assert r.status_code in (200, 201), r.text

        async def post(body: bytes, at: int) -> httpx.Response:
            signature = sign(body, secret=secret, at=at)
            headers = {"content-type": "application/json", "Persona-Signature": signature}
            async with httpx.AsyncClient(timeout=30) as http:
                return await http.post(
                    f"{proc.base_url}/webhooks/kyc-provider", content=body, headers=headers
                )

        true = persona_event("evt_skew_true", "inquiry.completed", "inq_T", reference_id="u-true")
        near = persona_event("evt_skew_4", "inquiry.completed", "inq_F", reference_id="u-4min")
        far = persona_event("evt_skew_6", "inquiry.completed", "inq_S", reference_id="u-6min")
        # a provider with the true clock; one 4 min off the other way from the process's
        # skew (9 min from the process's clock); one 6 min off (refused, beyond 300 s)
        answers = {
            "true": await post(true, int(time.time())),
            "4min": await post(near, int(time.time()) - (240 if skew > 0 else -240)),
            "6min": await post(far, int(time.time()) + (360 if skew > 0 else -360)),
        }
        stored = {r["event_id"] for r in await fetch(db, "SELECT event_id FROM kyc_webhook_events")}
    record(
        CaseRow(
            f"clock-skew-kyc-webhook{skew:+d}s",
            f"compliance process clock {skew:+d} s (libfaketime); provider true, 4 min off, "
            "6 min off; tolerance 300 s",
            3,
            len(stored),
            0 if {"evt_skew_true", "evt_skew_4"} <= stored else 1,
            0,
            None,
            f"process clock measured {offset:+.0f} s; answers "
            + ", ".join(f"{k} {v.status_code}" for k, v in answers.items()),
        )
    )
    assert answers["true"].status_code == 200, answers["true"].text
    assert answers["4min"].status_code == 200, answers["4min"].text
    assert answers["6min"].status_code == 401, answers["6min"].text
    assert stored == {"evt_skew_true", "evt_skew_4"}


@pytest.mark.parametrize("skew", SKEWS)
async def test_alerts_with_a_skewed_clock_signs_webhooks_a_true_receiver_accepts(
    db_factory: DatabaseFactory, log_dir: Path, skew: int
) -> None:
    """The alerts service signs its customer webhooks as settlement does: by the
    database's clock, so a true receiver (300 s tolerance) accepts every notification.
    One account escalating healthy -> warning -> margin_call -> liquidation: each
    escalation is sent at once (never folded), three signed requests."""
    account = "skew-desk"
    ladder = ["healthy", "warning", "margin_call", "liquidation"]
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    events = [
        margin_event(
            account,
            from_tier=ladder[i],
            to_tier=ladder[i + 1],
            evaluated_at=(at + timedelta(seconds=i)).isoformat(),
        )
        for i in range(3)
    ]
    env = {**skewed_env(skew), "FP_OUTBOUND_ALLOW_PRIVATE": "true"}
    with receiver() as rx:
        async with system(
            db_factory, db_factory, log_dir, services=("alerts",), extra_env=env
        ) as sys_:
            proc = sys_.procs["alerts"]
            offset = await _assert_skewed(proc.base_url, skew)
            async with proc.async_client(timeout=30) as http:
                made = await http.post(
                    "/contacts",
                    json={
                        "account_id": account,
                        "name": "Treasury desk",
                        "channels": [{"channel": "webhook", "address": rx.url}],
                    },
                )
                assert made.status_code == 201, made.text
                rx.secret = made.json()["webhook_signing_secret"]
                prefs = await http.put(
                    f"/accounts/{account}/preferences",
                    json={"kinds": ladder[1:], "channels": ["webhook"]},
                )
                assert prefs.status_code == 200, prefs.text
            started = time.monotonic()
            await publish(
                sys_.bus,
                [OutgoingEvent(e.id, MARGIN, e.subject, e.type, e.to_json()) for e in events],
            )
            db = sys_.db["alerts"]

            async def settled() -> bool:
                return await count_rows(db, "notifications", "status <> 'pending'") >= len(events)

            await wait_for(settled, timeout=120, interval=0.3)
            recover = time.monotonic() - started
            notes = await fetch(db, "SELECT status FROM notifications")
            attempts = await fetch(db, "SELECT response_code, outcome FROM delivery_attempts")
    with rx.lock:
        requests = list(rx.requests)
    stamped = [int(r.headers[SIGNATURE_HEADER].split(",")[0][2:]) for r in requests]
    drift = max(abs(t - r.at) for t, r in zip(stamped, requests, strict=True))
    refused = sum(not r.verified for r in requests)
    record(
        CaseRow(
            f"clock-skew-alert-webhooks{skew:+d}s",
            f"alerts process clock {skew:+d} s (libfaketime); receiver true, tolerance 300 s",
            len(events),
            len(requests) - refused,
            len(events) - (len(requests) - refused),
            0,
            round(recover, 1),
            f"process clock measured {offset:+.0f} s; signed t= at most {drift:.1f} s "
            f"from the receiver's clock; {refused} refused",
        )
    )
    assert [n["status"] for n in notes] == ["sent"] * len(events), notes
    assert refused == 0
    assert len(requests) == len(events)
    assert [dict(a) for a in attempts] == [{"response_code": 200, "outcome": "accepted"}] * 3
    # signed with the database's clock, not the process's (which is 5 min off)
    assert drift < 30, drift


@pytest.mark.parametrize("skew", SKEWS)
async def test_risk_leases_with_one_instance_skewed_keep_one_owner_per_partition(
    make_database: Callable[..., Awaitable[str]], bus_url: str, log_dir: Path, skew: int
) -> None:
    """Two risk instances on one database and bus (sharing the price subscription), the
    second 5 min off: the leases split the 16 partitions and stay split (no steal, no
    loss), each account is evaluated by its partition's owner only, each price is consumed
    once and none of the true-time prices is refused as "from the future"."""
    from fusion_prime.risk.spec import SPEC

    url = await make_database("risk", SPEC.migrations_dir)
    await prepare_bus(bus_url)
    env = {"FP_BUS_URL": bus_url, **BUS_ENV, "RISK_SWEEP_INTERVAL": "3600", "RISK_BOOK": "memory",
           "RISK_LEASE_SECONDS": "3"}  # fmt: skip
    procs = [
        ServiceProcess.for_service("risk", url, log_dir, extra_env=env),
        ServiceProcess.for_service("risk", url, log_dir, extra_env={**env, **skewed_env(skew)}),
    ]
    rng = random.Random(11)
    accounts = [f"skew-{i:03d}" for i in range(30)]
    ticks: list[Envelope] = []
    samples = 0
    try:
        for p in procs:
            p.start()
        for p in procs:
            await asyncio.to_thread(p.wait_ready, 90)
        offset = await _assert_skewed(procs[1].base_url, skew)
        clients = [p.async_client(timeout=30) for p in procs]
        try:
            split = await _split(clients)
            assert set(split.values()) == {s["instance"] for s in await _stats(clients)}
            for asset, prm in PARAMS.items():
                body = {**prm, "max_price_age_seconds": 3600}
                assert (await clients[0].put(f"/risk-parameters/{asset}", json=body)).is_success
            # prices stamped by the true clock, as the oracle stamps them
            t0 = datetime.now(UTC)
            base = [price_event(a, str(v), t0) for a, v in BASE.items()]
            ticks += base
            await _publish(bus_url, *base)
            for i, a in enumerate(accounts):
                r = await clients[i % 2].put(
                    f"/accounts/{a}/positions", json={"positions": random_positions(rng)}
                )
                assert r.status_code == 200, r.text
            # several lease periods: every sample has each partition held by exactly one
            # instance, the same one the database names, and nothing moves
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                tick = random_tick(rng, datetime.now(UTC) + timedelta(milliseconds=len(ticks)))
                ticks.append(tick)
                await _publish(bus_url, tick)
                held = await fetch(
                    url,
                    "SELECT partition, owner FROM risk_partition_leases WHERE expires_at > now()",
                )
                db_owner = {r["partition"]: r["owner"] for r in held}
                seen: dict[int, str] = {}
                for st in await _stats(clients):
                    for part in st["partitions_owned"]:
                        assert part not in seen, (part, seen[part], st["instance"])
                        seen[part] = st["instance"]
                assert seen == split, (seen, split)
                assert {p: db_owner.get(p) for p in split} == split, db_owner
                samples += 1
                await asyncio.sleep(0.5)
            await wait_for(lambda: drained(bus_url, PRICES_SUB), timeout=60)
            await wait_for(lambda: _books_match(url, clients), timeout=60, interval=0.3)
        finally:
            for c in clients:
                await c.aclose()
        states = await fetch(
            url,
            "SELECT account_id, evaluated_by, "
            "abs(extract(epoch FROM evaluated_at - now())) AS age FROM account_state",
        )
        inbox = await fetch(
            url,
            "SELECT event_id::text AS id, count(*) AS n FROM inbox WHERE subscription = $1 "
            "GROUP BY 1",
            PRICES_SUB,
        )
        rejected = await fetchval(url, "SELECT count(*) FROM price_rejections")
        events = await fetch(
            url,
            "SELECT account_id, from_tier, to_tier FROM margin_events "
            "WHERE event_type = 'margin.tier_changed' ORDER BY account_id, created_at, id",
        )
    finally:
        for p in procs:
            p.terminate()
    consumed = {r["id"]: r["n"] for r in inbox}
    wrong_owner = [
        r for r in states if r["evaluated_by"] != split[zlib.crc32(r["account_id"].encode()) % 16]
    ]
    last: dict[str, str] = {}
    doubled = 0
    for e in events:
        if last.get(e["account_id"]) == e["to_tier"]:
            doubled += 1
        last[e["account_id"]] = e["to_tier"]
    by: dict[str, int] = {}
    for r in states:
        by[r["evaluated_by"]] = by.get(r["evaluated_by"], 0) + 1
    record(
        CaseRow(
            f"clock-skew-leases{skew:+d}s",
            f"2 risk instances, one with its clock {skew:+d} s (libfaketime); leases 3 s",
            len(ticks),
            len(consumed),
            len({str(t.id) for t in ticks} - set(consumed)),
            sum(n - 1 for n in consumed.values()),
            None,
            f"process clock measured {offset:+.0f} s; {samples} lease samples, one owner each; "
            f"states by instance {sorted(by.values())}, wrong owner {len(wrong_owner)}; "
            f"prices rejected {rejected}; doubled tier changes {doubled}",
        )
    )
    assert samples >= 5
    assert len({r["account_id"] for r in states}) == len(accounts)
    assert not wrong_owner, wrong_owner
    assert all(float(r["age"]) < 120 for r in states), states  # the database's time
    assert set(consumed) == {str(t.id) for t in ticks}
    assert all(n == 1 for n in consumed.values())
    assert rejected == 0
    assert doubled == 0, events
