"""The risk service's live path through the real process and the real bus.

Run: .venv/bin/python -m bench.risk_live [--accounts N] [--ticks N] [--sql-ticks N]

One generated book (bench.risk's: fixed seed, 4 positions per account over 20 assets) is
written into a fresh risk database by COPY. The real service process (`fusion-prime serve
risk`) is started on it with RISK_BOOK=memory, then with RISK_BOOK=sql, on the same
database; price events are published on `market.prices.v1` in a postgres bus database and
the effect is read from the tables (the event's inbox row, committed with its outcome).

Per mode: start-up (process start to book loaded), resident memory of the process, a
single-asset tick (p50/p99; `in process` = from the pass's start to its commit, from
/stats; `end to end` = from publishing to the inbox row being visible), a 20-asset round
in one batch. The price of the ticked asset alternates between two levels, so each tick
moves a similar share of accounts across a tier bound (reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bench.risk import ASSETS, DECIMALS, N_ASSETS, SEED, tier_of
from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import MIGRATIONS_DIR, OutgoingEvent, PostgresBroker
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.risk import repository as repo
from fusion_prime.risk import service
from fusion_prime.risk.domain import Evaluator, State
from fusion_prime.risk.engine import Book, synthetic_book
from fusion_prime.risk.spec import SPEC
from tests.harness import DatabaseFactory, ServiceProcess, admin_url_from_env

TOPIC = "market.prices.v1"
SUB = "risk-engine-prices-consumer"
TICK_ASSET = 3


async def populate(url: str, book: Book, now: datetime) -> None:
    """Parameters, prices, accounts, positions (COPY) and the states the book implies."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO risk_parameters (asset, version, ltv, liquidation_threshold, "
                "liquidation_bonus, max_price_age_seconds, decimals) VALUES ($1, 1, $2, $3, "
                "0.05, 86400, $4)",
                [
                    (ASSETS[a], book.lt_exact[a] - Decimal("0.05"), book.lt_exact[a], DECIMALS[a])
                    for a in range(N_ASSETS)
                ],
            )
            await conn.executemany(
                "INSERT INTO prices (asset, price, source, source_time, event_id) "
                "VALUES ($1, $2, 'bench', $3, $4)",
                [(ASSETS[a], book.price_exact[a], now, uuid.uuid4()) for a in range(N_ASSETS)],
            )
            ids = [f"acct-{a:07d}" for a in range(book.n)]
            await conn.copy_records_to_table(
                "accounts", records=[(i,) for i in ids], columns=["id"]
            )
            scale = np.array([10 ** (DECIMALS[a] - 6) for a in range(N_ASSETS)], dtype=object)
            a_idx = book.pos_asset
            coll = book.coll.astype(object) * scale[a_idx]
            debt = book.debt.astype(object) * scale[a_idx]
            records = (
                (ids[int(acc)], ASSETS[int(asset)], int(c), int(d), DECIMALS[int(asset)])
                for acc, asset, c, d in zip(
                    book.pos_account.tolist(), a_idx.tolist(), coll, debt, strict=True
                )
                if c or d
            )
            await conn.copy_records_to_table(
                "positions",
                records=records,
                columns=["account_id", "asset", "collateral", "debt", "decimals"],
            )
            tiers = book.full()
            await conn.copy_records_to_table(
                "account_state",
                records=(
                    (ids[a], tier_of(t).value, tier_of(t).value, now, now, now)
                    for a, t in enumerate(tiers.tolist())
                ),
                columns=[
                    "account_id",
                    "status",
                    "known_tier",
                    "last_event_at",
                    "last_snapshot_at",
                    "evaluated_at",
                ],
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def price_event(asset: str, price: Decimal, at: datetime) -> Envelope:
    data = {"asset": asset, "price": str(price), "source": "bench", "source_time": at.isoformat()}
    return Envelope(type="price.updated", source="oracle", subject=asset, data=data)


async def publish(broker: PostgresBroker, envelopes: list[Envelope]) -> None:
    await broker.publish(
        [OutgoingEvent(e.id, TOPIC, e.subject, e.type, e.to_json()) for e in envelopes]
    )


async def committed(conn: asyncpg.Connection, ids: list[uuid.UUID], timeout: float) -> float:
    """Wait until every event's inbox row is visible (committed with its effect)."""
    deadline = time.perf_counter() + timeout
    while True:
        n = await conn.fetchval(
            "SELECT count(*) FROM inbox WHERE subscription = $1 AND event_id = ANY($2::uuid[])",
            SUB,
            ids,
        )
        if n == len(ids):
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{n} of {len(ids)} events committed after {timeout} s")
        await asyncio.sleep(0.002)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def run_mode(
    mode: str,
    url: str,
    bus: str,
    book: Book,
    ticks: int,
    clock: list[datetime],
    log_dir: Path,
    move: Decimal,
) -> dict[str, Any]:
    env = {
        "FP_BUS_URL": bus,
        "RISK_BOOK": mode,
        "RISK_SWEEP_INTERVAL": "3600",
        "FP_BUS_POLL_INTERVAL": "0.5",
        "FP_LOG_LEVEL": "WARNING",
    }
    proc = ServiceProcess.for_service("risk", url, log_dir, extra_env=env)
    started = time.perf_counter()
    proc.start()
    out: dict[str, Any] = {"mode": mode}
    try:
        proc.wait_ready(120)
        async with proc.async_client(timeout=60) as client:
            while True:
                book_stats = (await client.get("/stats")).json()["book"]
                # loaded, and evaluating: its partitions leased (a load longer than the
                # leases' trust leaves them to the renewal that follows it)
                if mode == "sql" or (book_stats.get("loaded") and book_stats["partitions_owned"]):
                    break
                await asyncio.sleep(0.1)
            out["startup_s"] = time.perf_counter() - started
            out["load_s"] = book_stats.get("load_seconds")
            out["load_steps"] = book_stats.get("load_steps")
            assert proc.process is not None
            ps = psutil.Process(proc.process.pid)
            conn = await asyncpg.connect(asyncpg_dsn(url))
            async with PostgresBroker(bus, pool_size=1) as broker:
                low = (book.price_exact[TICK_ASSET] * move).quantize(Decimal("1e-4"))
                high = book.price_exact[TICK_ASSET]
                e2e, inproc, changed, attention = [], [], [], []
                for k in range(ticks):
                    clock[0] += timedelta(milliseconds=10)
                    env_ = price_event(ASSETS[TICK_ASSET], low if k % 2 == 0 else high, clock[0])
                    t0 = time.perf_counter()
                    await publish(broker, [env_])
                    e2e.append(await committed(conn, [env_.id], 600) - t0)
                    if mode == "memory":
                        last = (await client.get("/stats")).json()["book"]["last_tick"]
                        inproc.append(last["to_commit_ms"] / 1e3)
                        changed.append(last["changed"])
                        attention.append(last["attention"])
                out["tick_e2e"] = e2e
                out["tick_inproc"] = inproc
                out["changed"] = changed
                out["attention"] = attention
                clock[0] += timedelta(milliseconds=10)
                rng = np.random.default_rng(SEED + 2)
                batch = [
                    price_event(
                        ASSETS[a],
                        (
                            book.price_exact[a]
                            * Decimal(str(round(float(rng.uniform(0.99, 1.01)), 4)))
                        ).quantize(Decimal("1e-4")),
                        clock[0],
                    )
                    for a in range(N_ASSETS)
                ]
                t0 = time.perf_counter()
                await publish(broker, batch)
                out["round_e2e"] = await committed(conn, [e.id for e in batch], 900) - t0
                if mode == "memory":
                    last = (await client.get("/stats")).json()["book"]["last_tick"]
                    out["round_inproc"] = last["to_commit_ms"] / 1e3
                    out["round_changed"] = last["changed"]
                # back to the book's prices for the next mode
                clock[0] += timedelta(milliseconds=10)
                back = [
                    price_event(ASSETS[a], book.price_exact[a], clock[0]) for a in range(N_ASSETS)
                ]
                await publish(broker, back)
                await committed(conn, [e.id for e in back], 900)
            await conn.close()
            out["rss_mb"] = ps.memory_info().rss / 2**20
    finally:
        proc.terminate()
    return out


_TEMP_STATES = (
    "CREATE TEMP TABLE fp_states (account_id text, status text, known_tier text, "
    "factor numeric, last_event_at timestamptz, last_snapshot_at timestamptz, "
    "evaluated_at timestamptz, evaluated_by text) ON COMMIT DROP"
)
# the service's upsert from text arrays: the client sends strings (numeric and timestamptz
# input text of the same values), not Decimals and datetimes encoded one by one
_UPSERT_STATES_TEXT = (
    "INSERT INTO account_state (account_id, status, known_tier, factor, last_event_at, "
    "last_snapshot_at, evaluated_at, evaluated_by) SELECT u.a, u.s, u.k, u.f::numeric, "
    "u.e::timestamptz, u.n::timestamptz, u.t::timestamptz, $8::text FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) "
    "AS u(a, s, k, f, e, n, t) " + repo.STATES_ON_CONFLICT
)


def _state_text_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`repo.state_args` as text arrays for _UPSERT_STATES_TEXT."""
    ids, status, known, factor, last_e, last_s, at, by = args

    def ts(values: list[datetime | None]) -> list[str | None]:
        return [None if v is None else v.isoformat() for v in values]

    fs = [None if f is None else format(f, "f") for f in factor]
    return (ids, status, known, fs, ts(last_e), ts(last_s), ts(at), by)


# every account of the tick has a state row already: a plain UPDATE (no speculative insert)
_UPDATE_FROM_UNNEST = (
    "UPDATE account_state s SET status = u.s, known_tier = u.k, factor = u.f, "
    "last_event_at = u.e, last_snapshot_at = u.n, evaluated_at = u.t, evaluated_by = $8 "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], "
    "$6::timestamptz[], $7::timestamptz[]) AS u(a, s, k, f, e, n, t) WHERE s.account_id = u.a"
)
_STATE_COLUMNS = ["account_id", "status", "known_tier", "factor", "last_event_at",
                  "last_snapshot_at", "evaluated_at", "evaluated_by"]  # fmt: skip
_UPDATE_FROM_TEMP = (
    "UPDATE account_state s SET status = t.status, known_tier = t.known_tier, "
    "factor = t.factor, last_event_at = t.last_event_at, last_snapshot_at = "
    "t.last_snapshot_at, evaluated_at = t.evaluated_at, evaluated_by = t.evaluated_by "
    "FROM fp_states t WHERE s.account_id = t.account_id"
)


def _states_text(args: tuple[Any, ...]) -> bytes:
    ids, status, known, factor, last_e, last_s, at, by = args
    t, n = repo._copy_text, repo._numeric_text

    def ts(v: datetime | None) -> str:
        return "\\N" if v is None else v.isoformat()

    if not ids:
        return b""
    return (
        "\n".join(
            "\t".join((t(a), t(b), t(c), n(d), ts(e), ts(f), ts(g), t(by)))
            for a, b, c, d, e, f, g in zip(
                ids, status, known, factor, last_e, last_s, at, strict=True
            )
        )
        + "\n"
    ).encode()


async def persistence_floor(
    url: str, book: Book, at: datetime, move: Decimal, reps: int
) -> dict[str, Any]:
    """What PostgreSQL alone takes for the rows of one tick (issue 14's floor).

    The rows: the accounts a move of the ticked asset to x`move` changes (picked by the SQL
    filter and evaluated by the exact rules, in a transaction rolled back), with their
    state rows, snapshots, margin events and outbox rows built by the service's own code.
    Then, every payload built before the clock starts, each repetition writes them in a
    transaction that is rolled back (the book stays as it was; the embedded server runs
    with fsync and synchronous_commit off, so a commit would add little): (a) by the
    statements the service uses, (b) by text COPYs of strings built beforehand (states
    into a temporary table and one UPDATE), and the outbox into a text column instead of
    jsonb, which is the server's jsonb parse.
    """
    engine = create_async_engine(normalise_database_url(url, service="risk"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    asset = ASSETS[TICK_ASSET]
    low = (book.price_exact[TICK_ASSET] * move).quantize(Decimal("1e-4"))
    try:
        async with sessions() as s:
            tx = await s.begin()
            await repo.upsert_prices(s, [repo.PriceUpdate(asset, low, "bench", at, uuid.uuid4())])
            ids = await repo.attention(s, at, assets=[asset])
            _, config = await repo.get_config(s)
            ev = Evaluator(
                await repo.current_params(s), await repo.all_prices(s), config, at
            ).evaluate
            positions = await repo.positions_of(s, ids)
            states = await repo.states_of(s, ids)
            items = [(a, states.get(a, State()), ev(positions[a])) for a in ids]
            p = service.prepare_outcomes(items, config, at)
            await tx.rollback()
    finally:
        await engine.dispose()
    state_args = repo.state_args(p.states, "floor")
    states_text = _states_text(state_args)
    state_ids = [r.account_id for r in p.states]
    states_text_args = _state_text_args(state_args)
    snaps = p.snapshots
    snaps_text = repo.snapshot_copy(snaps)
    events_text = repo.margin_event_copy(p.events, p.prices_json)
    outbox = repo.outbox_records(p.events)
    outbox_text = repo.outbox_copy(outbox)
    out: dict[str, Any] = {
        "states": len(p.states),
        "events": len(p.events),
        "snapshots": len(snaps),
        "bytes": len(snaps_text) + len(events_text) + len(outbox_text) + len(states_text),
    }
    times: dict[str, list[float]] = {}

    def took(key: str, t: float) -> float:
        now = time.perf_counter()
        times.setdefault(key, []).append(now - t)
        return now

    class _Rollback(Exception):
        pass

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        upsert = await conn.prepare(repo.UPSERT_STATES)
        log_change = await conn.prepare(
            "INSERT INTO book_changes (kind, account_ids) VALUES ('states', $1::text[])"
        )
        upsert_text = await conn.prepare(_UPSERT_STATES_TEXT)
        update_states = await conn.prepare(_UPDATE_FROM_UNNEST)
        for _ in range(reps):
            # (a) the service's statements, payloads built before
            with contextlib.suppress(_Rollback):
                async with conn.transaction():
                    t0 = t = time.perf_counter()
                    await upsert.fetch(*state_args)
                    t = took("a_states", t)
                    await log_change.fetch(state_ids)
                    t = took("a_log", t)
                    await repo.send_copy(
                        conn, "health_snapshots", repo.SNAPSHOT_COLUMNS, snaps_text
                    )
                    t = took("a_snapshots", t)
                    await repo.send_copy(conn, "margin_events", repo.EVENT_COLUMNS, events_text)
                    t = took("a_margin_events", t)
                    await repo.send_copy(conn, "outbox", repo.OUTBOX_COLUMNS, outbox_text)
                    await conn.execute("SELECT pg_notify('fp_outbox', '')")
                    took("a_outbox", t)
                    took("a_total", t0)
                    raise _Rollback
            # (b) other ways to the same rows
            with contextlib.suppress(_Rollback):
                async with conn.transaction():
                    t = time.perf_counter()
                    await conn.execute(_TEMP_STATES)
                    await repo.send_copy(conn, "fp_states", _STATE_COLUMNS, states_text)
                    await conn.execute("ANALYZE fp_states")
                    await conn.execute(_UPDATE_FROM_TEMP)
                    took("b_states_temp", t)
                    raise _Rollback
            with contextlib.suppress(_Rollback):
                async with conn.transaction():
                    t = time.perf_counter()
                    await update_states.fetch(*state_args)
                    took("b_states_update", t)
                    raise _Rollback
            with contextlib.suppress(_Rollback):
                async with conn.transaction():
                    t = time.perf_counter()
                    await upsert_text.fetch(*states_text_args)
                    t = took("b_states_text", t)
                    await repo.copy_snapshots_binary(conn, snaps)
                    t = took("b_snapshots_binary", t)
                    await conn.copy_records_to_table(
                        "outbox", records=outbox, columns=repo.OUTBOX_COLUMNS
                    )
                    took("b_outbox_binary", t)
                    # the outbox's jsonb parse: the same rows into a text and a jsonb column
                    for kind in ("text", "jsonb"):
                        await conn.execute(
                            f"CREATE TEMP TABLE fp_outbox_{kind} (id uuid, topic text, "
                            f"subject text, event_type text, envelope {kind}) ON COMMIT DROP"
                        )
                        t = time.perf_counter()
                        await repo.send_copy(
                            conn, f"fp_outbox_{kind}", repo.OUTBOX_COLUMNS, outbox_text
                        )
                        took(f"outbox_into_{kind}", t)
                    raise _Rollback
    finally:
        await conn.close()
    out["ms"] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    out["reps"] = reps
    return out


async def main_async(args: argparse.Namespace) -> None:
    console = Console(width=170)
    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    url = await factory.create("risk", SPEC.migrations_dir)
    bus = await factory.create("bus", MIGRATIONS_DIR)
    log_dir = Path(".fusion-prime/bench-logs")
    try:
        t = time.perf_counter()
        book = synthetic_book(args.accounts, N_ASSETS, 4, SEED)
        now = datetime.now(UTC)
        await populate(url, book, now)
        console.print(f"book of {book.n:,} accounts written in {time.perf_counter() - t:.1f} s")
        async with PostgresBroker(bus, pool_size=1) as broker:
            await broker.ensure_subscription(TOPIC, SUB, 5)
        clock = [now]
        move = Decimal(args.move)
        mem = await run_mode("memory", url, bus, book, args.ticks, clock, log_dir, move)
        console.print({k: v for k, v in mem.items() if not isinstance(v, list)}, markup=False)
        sql = await run_mode("sql", url, bus, book, args.sql_ticks, clock, log_dir, move)
        floor = None
        if args.floor_reps:
            clock[0] += timedelta(milliseconds=10)
            floor = await persistence_floor(url, book, clock[0], move, args.floor_reps)
    finally:
        await factory.drop(url)
        await factory.drop(bus)
    holders = int(book.asset_ptr[TICK_ASSET + 1] - book.asset_ptr[TICK_ASSET])
    table = Table(
        title=f"risk live path, real process + postgres bus: {book.n:,} accounts x 4 positions, "
        f"tick asset holds {holders:,}"
    )
    for col in (
        "measure",
        "memory (RISK_BOOK=memory)",
        "target",
        "SQL path (RISK_BOOK=sql)",
        "ratio",
    ):
        table.add_column(col)

    def ms(v: float) -> str:
        return f"{v * 1e3:,.0f} ms"

    table.add_row(
        "start-up: process start -> serving (book loaded)",
        f"{mem['startup_s']:.1f} s (load {mem['load_s']:.1f} s)",
        "<= 15 s",
        f"{sql['startup_s']:.1f} s (no book)",
        "",
    )
    table.add_row("resident memory after the run", f"{mem['rss_mb']:,.0f} MB", "<= 2048 MB",
                  f"{sql['rss_mb']:,.0f} MB", "")  # fmt: skip
    for label, key in (("p50", 50), ("p99", 99)):
        table.add_row(
            f"single-asset tick {label}, end to end (publish -> committed)",
            f"{ms(pct(mem['tick_e2e'], key))} ({len(mem['tick_e2e'])} ticks)",
            "p99 <= 100 ms" if key == 99 else "",
            f"{ms(pct(sql['tick_e2e'], key))} ({len(sql['tick_e2e'])} ticks)",
            f"{pct(sql['tick_e2e'], key) / pct(mem['tick_e2e'], key):.1f}x",
        )
        table.add_row(
            f"single-asset tick {label}, in process (pass start -> commit)",
            ms(pct(mem["tick_inproc"], key)),
            "",
            "",
            "",
        )
    changed = statistics.median(mem["changed"])
    table.add_row(
        "accounts changing state per tick (median) / attention set",
        f"{changed:,.0f} ({changed / book.n:.2%}) / {statistics.median(mem['attention']):,.0f}",
        "1% of accounts",
        "",
        "",
    )
    table.add_row(
        "20-asset round in one batch, end to end",
        f"{ms(mem['round_e2e'])} (in process {ms(mem['round_inproc'])}, "
        f"{mem['round_changed']:,} changed)",
        "<= 300 ms",
        ms(sql["round_e2e"]),
        f"{sql['round_e2e'] / mem['round_e2e']:.1f}x",
    )
    console.print(table)
    if floor is not None:
        ft = Table(
            title=f"persistence floor: PostgreSQL alone taking one x{move} tick's rows "
            f"({floor['states']:,} state upserts, {floor['snapshots']:,} snapshots, "
            f"{floor['events']:,} margin events + outbox rows, {floor['bytes'] / 2**20:.1f} MB "
            f"of COPY text), payloads built before timing, median of {floor['reps']} "
            "rolled-back transactions, same run, same book"
        )
        for col in ("write", "the service's statement (this commit)", "other ways"):
            ft.add_column(col)
        f = floor["ms"]
        ft.add_row(
            "account_state",
            f"{f['a_states']:,.1f} ms (unnest upsert, typed arrays)",
            f"{f['b_states_text']:,.1f} ms (unnest upsert of text arrays), "
            f"{f['b_states_temp']:,.1f} ms (COPY into a temp table, ANALYZE, UPDATE), "
            f"{f['b_states_update']:,.1f} ms (UPDATE FROM unnest, no insert)",
        )
        ft.add_row("book_changes row", f"{f['a_log']:,.1f} ms", "")
        ft.add_row(
            "health_snapshots",
            f"{f['a_snapshots']:,.1f} ms (text COPY)",
            f"{f['b_snapshots_binary']:,.1f} ms (binary COPY of the Decimals, encoding included)",
        )
        ft.add_row("margin_events", f"{f['a_margin_events']:,.1f} ms (text COPY)", "")
        ft.add_row(
            "outbox (+ NOTIFY)",
            f"{f['a_outbox']:,.1f} ms (text COPY)",
            f"{f['b_outbox_binary']:,.1f} ms (binary COPY)",
        )
        ft.add_row(
            "outbox rows into a temp table: text / jsonb column (the jsonb parse)",
            f"{f['outbox_into_text']:,.1f} / {f['outbox_into_jsonb']:,.1f} ms",
            "",
        )
        ft.add_row("total", f"{f['a_total']:,.1f} ms", "")
        console.print(ft)
        changed = statistics.median(mem["changed"])
        console.print(
            f"floor per changed account: {f['a_total'] / max(floor['states'], 1) * 1e3:,.1f} us;"
            f" the tick's {changed:,.0f} changed accounts: floor {f['a_total']:,.0f} ms, "
            f"in-process tick p50 {pct(mem['tick_inproc'], 50) * 1e3:,.0f} ms"
        )
    console.print(
        f"load average {psutil.getloadavg()[0]:.2f} on {psutil.cpu_count()} cores "
        "(shared machine: timings move with it)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--sql-ticks", type=int, default=10)
    ap.add_argument(
        "--floor-reps",
        type=int,
        default=5,
        help="repetitions of the persistence floor phase (0: skip it)",
    )
    ap.add_argument(
        "--move", default="0.90", help="the ticked price alternates between x this and x 1"
    )
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
