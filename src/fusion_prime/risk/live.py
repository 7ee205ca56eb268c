"""The running service's book in memory: per-account sums re-evaluated incrementally.

Why: the set-based SQL filter costs a query over every holder of a changed asset on each
price batch (hundreds of ms at 100,000 accounts, seconds at a million). The book keeps,
per account, float64 weighted-collateral and debt sums and the last decided state; a
price change moves only its holders' sums (amount x price delta) and a vectorised filter
picks the accounts whose tier, unknown-price status, reminder or snapshot needs work.
Only those are evaluated with the exact Decimal rules (domain.py) from their rows in the
database and written with COPY, in the caller's transaction (the consumer's, with its
inbox row). Accounts whose float factor lies within REFINE_TOLERANCE of a bound (or of a
bound plus the hysteresis) always go to the exact rules, so tiers are exactly the exact
domain's.

Consistency with the tables:
* The tables stay the truth. The book follows them: every pass first reads what changed
  since it last looked - the `book_changes` log (positions, states written by another
  process, parameter and configuration versions; written under the evaluation lock, so
  its order is commit order) and the `prices` rows - and applies it. A position written
  through the API, by `fusion-prime risk import` or by another instance is therefore in
  the book before the next evaluation, whoever wrote it.
* One pass at a time per process (an asyncio lock held until the transaction ends, then
  the database's evaluation lock). If the transaction rolls back, the in-memory change is
  not trusted: the book is marked stale and rebuilt from the tables by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import SessionTransaction

from fusion_prime.platform.database import database_now, driver_connection
from fusion_prime.platform.observability import get_logger
from fusion_prime.risk import repository as repo
from fusion_prime.risk.domain import (
    LADDER,
    Position,
    Price,
    RiskParams,
    State,
    Tier,
    TierConfig,
    usable_price_time,
)
from fusion_prime.risk.engine import REFINE_TOLERANCE

log = get_logger(__name__)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

NONE = -1  # status / known tier never decided
UNKNOWN = len(LADDER)  # status code of unknown_price; 0..3 follow LADDER (severity)
NO_TIME = np.iinfo(np.int64).min
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
# more accounts than this changed outside the book since the last pass: reload it whole
RELOAD_ABOVE = 50_000
# accounts whose exact positions the book keeps (the oldest read are dropped beyond it):
# ~1 KB each, so at most ~250 MB; the accounts a tick evaluates are those near a bound,
# read again tick after tick
EXACT_KEPT = 250_000


def _code(tier: Tier | str | None) -> int:
    if tier is None:
        return NONE
    t = Tier(tier)
    return UNKNOWN if t is Tier.UNKNOWN_PRICE else LADDER.index(t)


_TIER_OF: dict[int, Tier | None] = {
    NONE: None,
    UNKNOWN: Tier.UNKNOWN_PRICE,
    **dict(enumerate(LADDER)),
}


def _micros(at: datetime | None) -> int:
    return NO_TIME if at is None else (at - EPOCH) // US


def _units(amount: int, decimals: int) -> float:
    return float(Decimal(amount).scaleb(-decimals))


def _binary_copy(raw: bytes, fields: Sequence[tuple[str, str]]) -> npt.NDArray[Any]:
    """Rows of a `COPY ... (FORMAT binary)` whose fields are all fixed-width and not null."""
    layout: list[tuple[str, str]] = [("_n", ">i2")]
    for name, kind in fields:
        layout += [(f"_l_{name}", ">i4"), (name, kind)]
    body = raw[19:-2]  # 19-byte signature/flags/extension header, int16 -1 trailer
    return np.frombuffer(body, dtype=np.dtype(layout))


# a COPY out that delivers nothing for this long is taken as stalled (the first rows of the
# largest load query, a million accounts numbered and joined, arrive within seconds)
COPY_IDLE_SECONDS = 60.0


async def _copy_out(
    apg: Any, query: str, *args: Any, fmt: str = "binary", idle: float = COPY_IDLE_SECONDS
) -> bytes:
    """The whole output of a `COPY (query) TO STDOUT`.

    The data arrive in a coroutine sink (a file object would have asyncpg hand every chunk
    to the default thread pool and back). A COPY that delivers nothing for `idle` seconds
    is cancelled and raised as TimeoutError: a stalled load then fails and is retried by
    the background task instead of holding the book, and every request waiting for it,
    without end (seen once in CI: a start-up load that never finished).
    """
    chunks: list[bytes] = []
    last = time.monotonic()

    async def sink(data: bytes) -> None:
        nonlocal last
        chunks.append(data)
        last = time.monotonic()

    copy = asyncio.ensure_future(apg.copy_from_query(query, *args, output=sink, format=fmt))
    try:
        while not copy.done():
            await asyncio.wait({copy}, timeout=max(0.0, last + idle - time.monotonic()) + 0.01)
            if not copy.done() and time.monotonic() - last >= idle:
                raise TimeoutError(
                    f"COPY out gave no data for {idle:.0f} s (the load is retried): {query[:60]}"
                )
        copy.result()
    finally:
        if not copy.done():
            copy.cancel()
            await asyncio.wait({copy}, timeout=5)
    return b"".join(chunks)


def partition_of(account_id: str, partitions: int) -> int:
    """Stable across processes and restarts (unlike hash()): crc32 of the id."""
    return zlib.crc32(account_id.encode()) % partitions


def _ladder(f: F64, bounds: Sequence[float]) -> npt.NDArray[np.int8]:
    """Tier codes (0 healthy .. 3 liquidation) of factors against descending bounds."""
    t = np.zeros(len(f), dtype=np.int8)
    for b in bounds:
        t += f < b
    return t


def database_key(url: URL) -> tuple[str | None, int | None, str | None]:
    return (url.host, url.port, url.database)


_BOOKS: dict[tuple[str | None, int | None, str | None], LiveBook] = {}


def register(book: LiveBook) -> None:
    _BOOKS[book.key] = book


def unregister(book: LiveBook) -> None:
    if _BOOKS.get(book.key) is book:
        del _BOOKS[book.key]


def book_for(session: AsyncSession) -> LiveBook | None:
    """The book this process keeps for the session's database (RISK_BOOK=memory)."""
    bind = session.bind
    url = getattr(bind, "url", None)
    return _BOOKS.get(database_key(url)) if url is not None else None


@dataclass
class PassStats:
    trigger: str = ""
    at: datetime | None = None
    candidates: int = 0
    attention: int = 0
    changed: int = 0
    events: int = 0
    filter_ms: float = 0.0  # catch-up + sums + vectorised filter
    persist_ms: float = 0.0  # exact evaluation of the attention set + its writes
    commit_ms: float | None = None  # from the pass's start to its transaction's commit
    started: float = 0.0


@dataclass
class _Holders:
    """One asset's holders: account indices (sorted) and amounts in whole units."""

    acc: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    coll: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    debt: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    held: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    pending: list[tuple[int, float, float]] = field(default_factory=list)

    def slots(self, accounts: I32) -> tuple[I64, npt.NDArray[np.bool_]]:
        pos = np.searchsorted(self.acc, accounts).astype(np.int64)
        found = pos < len(self.acc)
        found[found] = self.acc[pos[found]] == accounts[found]
        return pos, found

    def merge(self) -> None:
        if not self.pending:
            return
        extra = np.array(self.pending, dtype=np.float64)
        acc = np.concatenate([self.acc, extra[:, 0].astype(np.int32)])
        order = np.argsort(acc, kind="stable")
        self.acc = np.ascontiguousarray(acc[order])
        self.coll = np.concatenate([self.coll, extra[:, 1]])[order]
        self.debt = np.concatenate([self.debt, extra[:, 2]])[order]
        self.held = np.concatenate([self.held, np.ones(len(extra), bool)])[order]
        self.pending = []


class LiveBook:
    """Every account of one risk database, as the service keeps it between events."""

    def __init__(self, url: URL, instance: str = "local", partitions: int = 16) -> None:
        self.key = database_key(url)
        self.instance = instance
        self.partitions = partitions
        # partitions this instance holds a live lease on (live.Leases keeps it current);
        # evaluation is restricted to their accounts, the book itself stays complete
        self.owned = np.zeros(partitions, dtype=bool)
        self.lease_valid_until = 0.0  # time.monotonic() after which `owned` is not trusted
        self._evaluated_owned = np.zeros(partitions, dtype=bool)
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._owner: SyncSession | None = None
        self._token: object | None = None
        self.stale = True
        self.loaded_at: datetime | None = None
        self.load_seconds: float | None = None
        self.load_steps: dict[str, float] = {}  # seconds per step of the last load
        self.last: PassStats | None = None
        self.last_tick: PassStats | None = None
        self.rebuilds = 0
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.assets: list[str] = []
        self.asset_index: dict[str, int] = {}
        self.params: dict[str, RiskParams] = {}
        self.config = TierConfig()
        self.config_version = 0
        self.prices: dict[str, Price] = {}
        self.price = np.zeros(0)
        self.lt = np.zeros(0)
        self.valid = np.zeros(0, dtype=bool)
        self.holders: list[_Holders] = []
        self.last_seq = 0
        self._own: set[int] = set()  # book_changes rows this book wrote (already applied)
        # exact positions (as repo.positions_of returns them) of accounts read before; kept
        # current by every re-read of an account (_reload_accounts), dropped with the book
        self._exact: dict[int, list[Position]] = {}
        self.n = 0
        self._alloc(0)

    def _alloc(self, n: int) -> None:
        self.part = np.zeros(n, dtype=np.int16)
        self.weighted = np.zeros(n)
        self.debt = np.zeros(n)
        self.invalid = np.zeros(n, dtype=np.int16)
        self.npos = np.zeros(n, dtype=np.int16)
        self.status = np.full(n, NONE, dtype=np.int8)
        self.known = np.full(n, NONE, dtype=np.int8)
        self.last_event = np.full(n, NO_TIME, dtype=np.int64)
        self.last_snap = np.full(n, NO_TIME, dtype=np.int64)

    def _grow(self, n: int) -> None:
        cap = len(self.weighted)
        if n <= cap:
            return
        new = max(n, cap * 2, 1024)
        for name, fill in (
            ("part", 0),
            ("weighted", 0.0),
            ("debt", 0.0),
            ("invalid", 0),
            ("npos", 0),
            ("status", NONE),
            ("known", NONE),
            ("last_event", NO_TIME),
            ("last_snap", NO_TIME),
        ):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    # -- the transaction a pass belongs to ---------------------------------------------

    async def begin(self, session: AsyncSession, *, loading: bool = False) -> None:
        """Hold the book until `session`'s transaction ends (re-entrant in it).

        Committed: the in-memory changes stand. Otherwise (rolled back, or a rollback that
        itself failed): they cannot be trusted, the book is rebuilt from the tables by the
        next pass.

        The hold ends on the transaction's end (`after_transaction_end`), not on
        `after_rollback`: SQLAlchemy does not send `after_rollback` when the rollback
        itself raises (the server dropped the connection, and what ended the pass was not
        the driver noticing it), and the book stayed held for good, every later pass
        (prices, position writes, the sweep) waiting on it (the likely cause of a CI run in
        which risk's prices consumer applied nothing after its database server restarted).
        """
        ss = session.sync_session
        if self._owner is ss:
            return
        if ss.get_transaction() is None:
            await session.connection()  # begins the transaction whose end we wait for
        root = ss.get_transaction()
        if not loading:
            await self.ready.wait()
        await self._lock.acquire()
        self._owner = ss
        token = object()
        self._token = token
        committed = False

        def _commit(_: SyncSession) -> None:
            nonlocal committed
            if ss.get_nested_transaction() is None:  # the root's commit, not a savepoint's
                committed = True

        def _ended(_: SyncSession, transaction: SessionTransaction) -> None:
            if transaction is not root or self._token is not token:
                return  # a savepoint, or a listener of an earlier transaction of the session
            self._token = None
            if not committed:
                if not self.stale:
                    log.warning("transaction rolled back: the book is rebuilt on the next pass")
                self.stale = True
            else:
                if self.last is not None and self.last.commit_ms is None:
                    self.last.commit_ms = (time.perf_counter() - self.last.started) * 1e3
                if loading and not self.stale:
                    self.ready.set()
            self._owner = None
            self._lock.release()

        event.listen(ss, "after_commit", _commit)
        event.listen(ss, "after_transaction_end", _ended)

    # -- loading -----------------------------------------------------------------------

    async def _load(self, session: AsyncSession) -> None:
        started = time.perf_counter()
        self._reset()
        apg = await driver_connection(session)
        self.last_seq = int(await apg.fetchval("SELECT coalesce(max(seq), 0) FROM book_changes"))
        self.config_version, self.config = await repo.get_config(session)
        self._set_params(await repo.current_params(session))
        # one transaction-scoped allowance: the join over every position and the numbering
        # of the accounts stay in memory (the default 4 MB spilled them to disk)
        await apg.execute("SET LOCAL work_mem = '256MB'")
        steps: dict[str, float] = {}
        t = time.perf_counter()
        # indices follow the database's own order of ids (every statement below orders or
        # numbers by it; writers of accounts hold the evaluation lock, which this pass holds
        # too). Ids as one text COPY: an account id is [A-Za-z0-9_.:-] (never escaped)
        raw = await _copy_out(apg, "SELECT id FROM accounts ORDER BY id", fmt="text")
        if b"\\" in raw:  # an id COPY had to escape (not one the API admits): row by row
            self.ids = [r[0] for r in await apg.fetch("SELECT id FROM accounts ORDER BY id")]
        else:
            self.ids = raw.decode().split("\n")[:-1]
        del raw
        self.index = dict(zip(self.ids, range(len(self.ids)), strict=True))
        self.n = len(self.ids)
        self._alloc(self.n)
        crc = zlib.crc32
        parts = self.partitions
        self.part[: self.n] = np.fromiter(
            (crc(a.encode()) % parts for a in self.ids), dtype=np.int16, count=self.n
        )
        steps["accounts"] = time.perf_counter() - t
        log.info("book loading", step="accounts", accounts=self.n)
        t = time.perf_counter()
        raw = await _copy_out(
            apg,
            "SELECT a.i, (coalesce(array_position($1::text[], p.asset), 0) - 1)::int4, "
            # '1e-N', not power(10::numeric, -N): that is 0 for N = 18 on PostgreSQL 15
            "(p.collateral * CAST('1e-' || p.decimals AS numeric))::float8, "
            "(p.debt * CAST('1e-' || p.decimals AS numeric))::float8 FROM positions p "
            "JOIN (SELECT id, (row_number() OVER (ORDER BY id) - 1)::int4 AS i FROM accounts) a "
            "ON a.id = p.account_id",
            self.assets,
        )
        rows = _binary_copy(raw, [("acc", ">i4"), ("asset", ">i4"), ("c", ">f8"), ("d", ">f8")])
        del raw
        # by asset, then account: sorted here (numpy) rather than by the server
        order = np.lexsort((rows["acc"], rows["asset"]))
        acc = rows["acc"][order].astype(np.int32)
        asset = rows["asset"][order].astype(np.int32)
        coll = rows["c"][order].astype(np.float64)
        debt = rows["d"][order].astype(np.float64)
        npositions = len(rows)
        del rows, order
        if (asset < 0).any():
            raise RuntimeError("a position's asset has no risk parameters")
        steps["positions"] = time.perf_counter() - t
        log.info("book loading", step="positions", positions=npositions)
        t = time.perf_counter()
        ptr = np.searchsorted(asset, np.arange(len(self.assets) + 1))
        for a in range(len(self.assets)):
            s, e = int(ptr[a]), int(ptr[a + 1])
            self.holders[a] = _Holders(
                np.ascontiguousarray(acc[s:e]),
                np.ascontiguousarray(coll[s:e]),
                np.ascontiguousarray(debt[s:e]),
                np.ones(e - s, bool),
            )
        self.npos[: self.n] = np.bincount(acc, minlength=self.n).astype(np.int16)
        del acc, asset, coll, debt
        # one row per account, in the ids' order (no numbering needed): the stored state
        raw = await _copy_out(
            apg,
            "SELECT CASE s.status WHEN 'healthy' THEN 0 WHEN 'warning' THEN 1 "
            "WHEN 'margin_call' THEN 2 WHEN 'liquidation' THEN 3 WHEN 'unknown_price' THEN 4 "
            "ELSE -1 END::int2, CASE s.known_tier WHEN 'healthy' THEN 0 WHEN 'warning' THEN 1 "
            "WHEN 'margin_call' THEN 2 WHEN 'liquidation' THEN 3 ELSE -1 END::int2, "
            "coalesce((extract(epoch FROM s.last_event_at) * 1000000)::int8, $1), "
            "coalesce((extract(epoch FROM s.last_snapshot_at) * 1000000)::int8, $1) "
            "FROM accounts a LEFT JOIN account_state s ON s.account_id = a.id ORDER BY a.id",
            int(NO_TIME),
        )
        st = _binary_copy(raw, [("s", ">i2"), ("k", ">i2"), ("e", ">i8"), ("n", ">i8")])
        del raw
        if len(st) != self.n:
            raise RuntimeError("accounts changed while the book was loading")
        self.status[: self.n] = st["s"]
        self.known[: self.n] = st["k"]
        self.last_event[: self.n] = st["e"]
        self.last_snap[: self.n] = st["n"]
        nstates = int((st["s"] != NONE).sum())
        del st
        steps["states"] = time.perf_counter() - t
        log.info("book loading", step="states", states=nstates)
        await self._sync_prices(session, full=True)
        self.stale = False
        self.rebuilds += 1
        self.loaded_at = datetime.now(UTC)
        self.load_seconds = time.perf_counter() - started
        self.load_steps = {k: round(v, 3) for k, v in steps.items()}
        log.info(
            "book loaded",
            accounts=self.n,
            positions=sum(len(h.acc) for h in self.holders),
            seconds=round(self.load_seconds, 3),
            mb=round(self.nbytes() / 2**20, 1),
            steps=self.load_steps,
        )

    def _set_params(self, params: dict[str, RiskParams]) -> list[int]:
        """New parameter versions; returns assets whose threshold changed (sums moved)."""
        moved: list[int] = []
        for asset, rp in sorted(params.items()):
            if asset not in self.asset_index:
                self.asset_index[asset] = len(self.assets)
                self.assets.append(asset)
                self.holders.append(_Holders())
                self.price = np.append(self.price, 0.0)
                self.lt = np.append(self.lt, float(rp.liquidation_threshold))
                self.valid = np.append(self.valid, False)
                continue
            a = self.asset_index[asset]
            lt = float(rp.liquidation_threshold)
            if lt != self.lt[a]:
                h = self.holders[a]
                self.weighted[h.acc] += h.coll * (self.price[a] * (lt - self.lt[a]))
                self.lt[a] = lt
                moved.append(a)
        self.params = params
        return moved

    # -- what changed in the tables since the last pass --------------------------------

    async def _sync_prices(self, session: AsyncSession, *, full: bool = False) -> list[int]:
        """Apply stored prices that differ from the book's; returns those assets."""
        changed: list[int] = []
        for asset, p in (await repo.all_prices(session)).items():
            a = self.asset_index.get(asset)
            if a is None:
                continue
            old = self.prices.get(asset)
            if (
                not full
                and old is not None
                and (old.price, old.source_time)
                == (
                    p.price,
                    p.source_time,
                )
            ):
                continue
            self.prices[asset] = p
            new = float(p.price)
            delta = new - self.price[a]
            self.price[a] = new
            h = self.holders[a]
            # accounts are unique within one asset's holders, so fancy-index += is exact
            if full:
                self.weighted[h.acc] += h.coll * (new * self.lt[a])
                self.debt[h.acc] += h.debt * new
            else:
                self.weighted[h.acc] += h.coll * (delta * self.lt[a])
                self.debt[h.acc] += h.debt * delta
            changed.append(a)
        return changed

    def _sync_validity(self, now: datetime, *, full: bool = False) -> list[int]:
        """Assets whose price became usable or unusable (missing, stale, future) now."""
        flipped: list[int] = []
        for asset, a in self.asset_index.items():
            p = self.prices.get(asset)
            rp = self.params.get(asset)
            ok = (
                p is not None
                and rp is not None
                and usable_price_time(p.source_time, now, rp.max_price_age, self.config)
            )
            if full or ok != bool(self.valid[a]):
                h = self.holders[a]
                held = h.acc[h.held]
                if full:
                    if not ok:
                        self.invalid[held] += 1
                else:
                    self.invalid[held] += np.int16(-1 if ok else 1)
                self.valid[a] = ok
                flipped.append(a)
        return flipped

    async def _catch_up(self, session: AsyncSession) -> tuple[set[int], bool, list[int]]:
        """book_changes since the last pass: (accounts reloaded, config changed, assets
        whose threshold moved). Too many accounts: the book is reloaded instead."""
        apg = await driver_connection(session)
        rows = await apg.fetch(
            "SELECT seq, kind, account_ids FROM book_changes WHERE seq > $1 ORDER BY seq",
            self.last_seq,
        )
        if not rows:
            return set(), False, []
        self.last_seq = int(rows[-1]["seq"])
        ids: set[str] = set()
        config = False
        params = False
        for r in rows:
            if r["seq"] in self._own:
                self._own.discard(r["seq"])
                continue
            if r["kind"] in ("positions", "states"):
                ids.update(r["account_ids"] or ())
            elif r["kind"] == "params":
                params = True
            else:
                config = True
        moved: list[int] = []
        if params:
            moved = self._set_params(await repo.current_params(session))
        if config:
            self.config_version, self.config = await repo.get_config(session)
        if len(ids) > RELOAD_ABOVE:
            self.stale = True
            return set(), True, moved
        return await self._reload_accounts(session, sorted(ids)), config, moved

    async def _reload_accounts(self, session: AsyncSession, ids: Sequence[str]) -> set[int]:
        """Positions and state of these accounts, from the tables."""
        if not ids:
            return set()
        new = [a for a in ids if a not in self.index]
        for a in new:
            self.index[a] = len(self.ids)
            self.ids.append(a)
        self.n = len(self.ids)
        self._grow(self.n)
        for a in new:
            self.part[self.index[a]] = partition_of(a, self.partitions)
        idx = np.array(sorted(self.index[a] for a in ids), dtype=np.int32)
        for h in self.holders:  # the accounts' old slots hold nothing until re-set
            pos, found = h.slots(idx)
            h.coll[pos[found]] = 0.0
            h.debt[pos[found]] = 0.0
            h.held[pos[found]] = False
        positions = await repo.positions_of(session, ids)
        for account_id, ps in positions.items():
            self._set_account(self.index[account_id], ps)
        self._keep_exact(positions)
        for h in self.holders:
            h.merge()
        states = await repo.states_of(session, ids)
        for account_id in ids:
            self._remember(self.index[account_id], states.get(account_id, State()))
        return {int(i) for i in idx}

    def _keep_exact(self, positions: dict[str, list[Position]]) -> None:
        exact, index = self._exact, self.index
        for account_id, ps in positions.items():
            i = index[account_id]
            exact.pop(i, None)  # re-inserted last: the newest read
            exact[i] = ps
        if len(exact) > EXACT_KEPT:
            for i in list(itertools.islice(exact, len(exact) - EXACT_KEPT)):
                del exact[i]

    async def positions_for(
        self, session: AsyncSession, ids: Sequence[str]
    ) -> dict[str, list[Position]]:
        """The exact positions of these accounts (what repo.positions_of reads in this
        transaction): kept from an earlier read, which every change of the account's
        positions replaces before a pass evaluates it (the book_changes log), and read for
        the others. Callers must not modify the lists."""
        exact, index = self._exact, self.index
        out: dict[str, list[Position]] = {}
        missing: list[str] = []
        for a in ids:
            got = exact.get(index.get(a, -1))
            if got is None:
                missing.append(a)
            else:
                out[a] = got
        if missing:
            read = await repo.positions_of(session, missing)
            for a in ids:  # no account the book does not know is kept (not indexed yet)
                if a not in index:
                    out[a] = read.pop(a)
            self._keep_exact(read)
            out.update(read)
        return out

    async def states_for(self, session: AsyncSession, ids: Sequence[str]) -> dict[str, State]:
        """The stored states of these accounts as the book holds them (what
        repo.states_of reads, State() for an account without a row: the book takes every
        state a pass writes, and re-reads those written elsewhere from the log before it
        evaluates); accounts it does not know are read."""
        index = self.index
        unknown = [a for a in ids if a not in index]
        out = await repo.states_of(session, unknown) if unknown else {}
        status, known = self.status, self.known
        last_e, last_s = self.last_event, self.last_snap
        for a in ids:
            i = index.get(a)
            if i is None:
                continue
            e, n = int(last_e[i]), int(last_s[i])
            # an account without a state row has State() here (as callers default to)
            out[a] = State(
                _TIER_OF[int(status[i])],
                _TIER_OF[int(known[i])],
                None if e == NO_TIME else EPOCH + timedelta(microseconds=e),
                None if n == NO_TIME else EPOCH + timedelta(microseconds=n),
            )
        return out

    def _set_account(self, i: int, positions: Sequence[Position]) -> None:
        w = d = 0.0
        invalid = 0
        for p in positions:
            a = self.asset_index[p.asset]
            c, dd = _units(p.collateral, p.decimals), _units(p.debt, p.decimals)
            h = self.holders[a]
            pos, found = h.slots(np.array([i], dtype=np.int32))
            if found[0]:
                h.coll[pos[0]], h.debt[pos[0]], h.held[pos[0]] = c, dd, True
            else:
                h.pending.append((i, c, dd))
            w += c * self.price[a] * self.lt[a]
            d += dd * self.price[a]
            invalid += 0 if self.valid[a] else 1
        self.weighted[i], self.debt[i] = w, d
        self.invalid[i] = invalid
        self.npos[i] = len(positions)

    def _remember(self, i: int, s: State) -> None:
        self.status[i] = _code(s.status)
        self.known[i] = _code(s.known_tier)
        self.last_event[i] = _micros(s.last_event_at)
        self.last_snap[i] = _micros(s.last_snapshot_at)

    # -- the vectorised filter ---------------------------------------------------------

    def factors(self, acc: I32) -> F64:
        d = self.debt[acc]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, self.weighted[acc] / np.where(d > 0, d, 1.0), np.inf)

    def raw_tiers(self, acc: I32) -> npt.NDArray[np.int8]:
        """Float tiers without hysteresis (unknown_price where a price is unusable)."""
        t = _ladder(self.factors(acc), [float(x) for x in self.config.bounds])
        t[self.invalid[acc] > 0] = UNKNOWN
        return t

    def attention(self, acc: I32, now: datetime) -> I32:
        """Of `acc`, the accounts the exact rules must look at: the decision (tier with
        hysteresis, unknown-price episode) may differ from the stored one, the factor is
        within the tolerance of a decision bound, or a reminder or snapshot is due."""
        acc = acc[(self.npos[acc] > 0) & self.owned_accounts(acc)]
        if not len(acc):
            return acc
        cfg = self.config
        f = self.factors(acc)
        bounds = [float(x) for x in cfg.bounds]
        shifted_bounds = [float(x + cfg.hysteresis) for x in cfg.bounds]
        raw = _ladder(f, bounds)
        shifted = _ladder(f, shifted_bounds)
        prev = self.known[acc]
        status = self.status[acc]
        new = np.where(
            (prev == NONE) | (raw >= prev), raw, np.where(shifted < prev, shifted, prev)
        ).astype(np.int8)
        unknown = self.invalid[acc] > 0
        new[unknown] = UNKNOWN
        need = new != status
        near = np.zeros(len(acc), dtype=bool)
        for b in (*bounds, *shifted_bounds):
            near |= np.abs(f - b) <= REFINE_TOLERANCE * b
        need |= near & ~unknown
        now_us = _micros(now)
        remind_us = cfg.reminder_interval // US
        snap_us = cfg.snapshot_interval // US
        last_e = self.last_event[acc]
        alerting = (new == LADDER.index(Tier.MARGIN_CALL)) | (new == LADDER.index(Tier.LIQUIDATION))
        need |= alerting & ((last_e == NO_TIME) | (now_us - last_e >= remind_us))
        last_s = self.last_snap[acc]
        need |= (last_s == NO_TIME) | (now_us - last_s >= snap_us)
        picked: I32 = acc[need]
        return picked

    def owned_accounts(self, acc: I32) -> npt.NDArray[np.bool_]:
        if time.monotonic() >= self.lease_valid_until:
            return np.zeros(len(acc), dtype=bool)  # leases not renewed in time: hands off
        mask: npt.NDArray[np.bool_] = self.owned[self.part[acc]]
        return mask

    def owns(self, account_id: str) -> bool:
        return bool(
            time.monotonic() < self.lease_valid_until
            and self.owned[partition_of(account_id, self.partitions)]
        )

    def holders_of(self, assets: Iterable[int]) -> I32:
        parts = [self.holders[a].acc[self.holders[a].held] for a in assets]
        if not parts:
            return np.empty(0, np.int32)
        return np.unique(np.concatenate(parts)).astype(np.int32)

    # -- one pass ----------------------------------------------------------------------

    async def refresh(
        self,
        session: AsyncSession,
        at: datetime | None,
        trigger: str,
        *,
        force: Sequence[str] = (),
        everyone: bool = False,
        timely: bool = True,
    ) -> Any:
        """Catch up with the tables, re-evaluate what the changes touch, persist outcomes.

        `force`: accounts evaluated whatever the filter says (their positions were just
        replaced; only those of owned partitions); `everyone`: every account is a
        candidate (sweep, configuration); `timely`: False for a pass woken by another
        instance's change, which applies changes but leaves time-driven work (prices
        going stale) to the sweep and the event passes.
        """
        from fusion_prime.risk.service import Outcome, reevaluate_accounts

        await self.begin(session, loading=self.stale and not self.ready.is_set())
        await repo.lock_evaluation(session)
        # the clock is read once the lock is held: passes of several instances then carry
        # increasing times in commit order (events, states); tests may pass their own time.
        # It is the database's clock: an instance whose own clock is minutes off would
        # otherwise write times out of order, see reminders due early and prices from
        # the future
        now = at or await database_now(session)
        t0 = time.perf_counter()
        stats = PassStats(trigger=trigger, at=now, started=t0)
        touched: set[int] = set()
        config_changed = False
        assets: list[int] = []
        if not self.stale:
            touched, config_changed, assets = await self._catch_up(session)
        if self.stale:
            await self._load(session)
            self._sync_validity(now, full=True)
            touched, config_changed, assets = set(), True, []
        else:
            prices_moved = await self._sync_prices(session)
            assets += prices_moved
            if timely:
                assets += self._sync_validity(now)
            if prices_moved and trigger == "price":
                await repo.notify_books(session)  # the other instances apply them too
        # what this pass may evaluate; partitions gained since the last pass (taken over,
        # or held again after leases lapsed) have every account looked at
        effective = self.owned & (time.monotonic() < self.lease_valid_until)
        newly = effective & ~self._evaluated_owned
        self._evaluated_owned = effective.copy()
        if everyone or config_changed:
            candidates = np.arange(self.n, dtype=np.int32)
        else:
            candidates = self.holders_of(sorted(set(assets)))
            if touched:
                candidates = np.union1d(candidates, np.fromiter(touched, np.int32)).astype(np.int32)
            if newly.any():  # taken over: everything of those partitions is looked at
                mine = np.flatnonzero(newly[self.part[: self.n]]).astype(np.int32)
                candidates = np.union1d(candidates, mine).astype(np.int32)
        picked = self.attention(candidates, now)
        ids = sorted({self.ids[i] for i in picked.tolist()} | {a for a in force if self.owns(a)})
        stats.candidates = len(candidates)
        stats.attention = len(ids)
        stats.filter_ms = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        out: Outcome = await reevaluate_accounts(
            session,
            ids,
            now,
            trigger,
            log_states=False,
            evaluated_by=self.instance,
            read_positions=self.positions_for,
            read_states=self.states_for,
        )
        for r in out.states:
            self._remember(self.index[r.account_id], r.state)
        if out.states:
            # other instances' books learn these states from the log; this one skips its own
            self._own.add(
                await repo.log_book_change(session, "states", [r.account_id for r in out.states])
            )
        stats.changed = out.changed
        stats.events = len(out.events)
        stats.persist_ms = (time.perf_counter() - t1) * 1e3
        self.last = stats
        if trigger == "price":
            self.last_tick = stats
        return out

    async def behind(self, session: AsyncSession) -> bool:
        """Whether the tables hold a change this book has not applied (read without the
        evaluation lock: a follow-up pass is only run when there is one)."""
        if self.stale:
            return True
        apg = await driver_connection(session)
        seq = await apg.fetchval("SELECT coalesce(max(seq), 0) FROM book_changes")
        if (
            int(seq) > self.last_seq
            and not {
                int(r[0])
                for r in await apg.fetch(
                    "SELECT seq FROM book_changes WHERE seq > $1", self.last_seq
                )
            }
            <= self._own
        ):
            return True
        for r in await apg.fetch("SELECT asset, price, source_time FROM prices"):
            p = self.prices.get(r["asset"])
            if r["asset"] in self.asset_index and (
                p is None or (p.price, p.source_time) != (r["price"], r["source_time"])
            ):
                return True
        effective = self.owned & (time.monotonic() < self.lease_valid_until)
        if not np.array_equal(effective, self._evaluated_owned):
            return True
        return False

    # -- views -------------------------------------------------------------------------

    def account_view(self, account_id: str) -> dict[str, Any] | None:
        i = self.index.get(account_id)
        if i is None:
            return None
        acc = np.array([i], dtype=np.int32)

        def tier(code: int) -> str | None:
            if code == NONE:
                return None
            return (Tier.UNKNOWN_PRICE if code == UNKNOWN else LADDER[code]).value

        f = float(self.factors(acc)[0])
        return {
            "account_id": account_id,
            "positions": int(self.npos[i]),
            "weighted_collateral": float(self.weighted[i]),
            "debt_value": float(self.debt[i]),
            "factor": None if not np.isfinite(f) else f,
            "raw_tier": tier(int(self.raw_tiers(acc)[0])),
            "status": tier(int(self.status[i])),
            "known_tier": tier(int(self.known[i])),
            "unusable_prices": int(self.invalid[i]),
            "partition": int(self.part[i]),
        }

    def nbytes(self) -> int:
        arrays = sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))
        return arrays + sum(h.acc.nbytes + h.coll.nbytes + h.debt.nbytes for h in self.holders)

    def stats(self) -> dict[str, Any]:
        def one(s: PassStats | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {
                "trigger": s.trigger,
                "at": s.at.isoformat() if s.at else None,
                "candidates": s.candidates,
                "attention": s.attention,
                "changed": s.changed,
                "events": s.events,
                "evaluation_ms": round(s.filter_ms, 3),
                "persistence_ms": round(s.persist_ms, 3),
                "to_commit_ms": None if s.commit_ms is None else round(s.commit_ms, 3),
            }

        return {
            "mode": "memory",
            "loaded": self.ready.is_set() and not self.stale,
            "accounts": self.n,
            "positions": int(sum(int(h.held.sum()) for h in self.holders)),
            "assets": len(self.assets),
            "memory_bytes": self.nbytes(),
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "load_steps": self.load_steps,
            "loaded_at": self.loaded_at.isoformat() if self.loaded_at else None,
            "rebuilds": self.rebuilds,
            "instance": self.instance,
            "partitions": self.partitions,
            "partitions_owned": [int(p) for p in np.flatnonzero(self.owned)]
            if time.monotonic() < self.lease_valid_until
            else [],
            "last_tick": one(self.last_tick),
            "last_pass": one(self.last),
        }


class Leases:
    """This instance's partition leases: taken, renewed every third of the lease time,
    released at shutdown; a dead instance's expire and the others take them over."""

    def __init__(self, book: LiveBook, sessions: Any, lease_seconds: float) -> None:
        self.book = book
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)

    async def renew(self) -> list[int]:
        started = time.monotonic()
        async with self.sessions() as session, session.begin():
            held = await repo.lease_partitions(
                session, self.book.instance, self.book.partitions, self.lease
            )
        owned = np.zeros(self.book.partitions, dtype=bool)
        owned[held] = True
        if not np.array_equal(owned, self.book.owned):
            log.info("partitions", instance=self.book.instance, owned=held)
        self.book.owned = owned
        # trusted a little less long than the database's expiry, measured from before it
        self.book.lease_valid_until = started + self.lease.total_seconds() * 0.8
        return held

    async def run(self) -> None:
        """Renew now (the first run follows the book's load, which can outlast the trust
        in the leases taken before it: until renewed, the instance evaluates nothing),
        then every third of the lease time."""
        try:
            while True:
                await self.renew()
                await asyncio.sleep(self.lease.total_seconds() / 3)
        except asyncio.CancelledError:
            await self.release()
            raise

    async def release(self) -> None:
        self.book.owned = np.zeros(self.book.partitions, dtype=bool)
        try:
            async with self.sessions() as session, session.begin():
                await repo.release_partitions(session, self.book.instance)
        except Exception:  # shutting down: the leases expire by themselves
            log.warning("partition leases not released; they expire", exc_info=True)


async def load(book: LiveBook, sessions: Any, leases: Leases | None = None) -> None:
    """The start-up load: leases first (so the first pass already evaluates what this
    instance owns), then one pass in its own transaction; sets `ready` on commit."""
    if leases is not None:
        await leases.renew()
    async with sessions() as session, session.begin():
        await book.refresh(session, None, "load")


async def follow(book: LiveBook, sessions: Any, dsn: str, interval: float) -> None:
    """Apply other instances' changes soon: woken by NOTIFY risk_book (position writes,
    states, parameter versions, prices another instance consumed), polling every
    `interval` in case a notification was missed."""
    from fusion_prime.platform.bus.postgres import Listener

    wake = asyncio.Event()
    listener = Listener(dsn, repo.BOOK_CHANNEL, lambda _payload: wake.set())
    try:
        while True:
            await listener.ensure()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval)
            wake.clear()
            if not book.ready.is_set():
                continue
            async with sessions() as session:
                behind = await book.behind(session)
            if not behind:
                continue  # nothing new: no pass, no evaluation lock taken
            async with sessions() as session, session.begin():
                await book.refresh(session, None, "changes", timely=False)
    finally:
        await listener.close()
