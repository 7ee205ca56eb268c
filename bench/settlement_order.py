"""Settlement: the cost of chain order when events arrive late (re-fold).

Run: .venv/bin/python -m bench.settlement_order [--escrows N] [--repeat R]

The real batch handler (`handle_chain_events` through `consume_batch`, 500 events per
transaction) on the test PostgreSQL server, N escrows of four events each (deployed, two
approvals, released), delivered three ways, each into its own fresh database:

- chain order (the baseline, measured in the same run): every escrow's events in order;
- shuffled within batches: each batch holds whole escrows in random order, sorted into
  chain order by the handler (no re-fold);
- late approvals: a first pass of batches with every deployment and release (the release
  is an anomaly then), a second pass with the approvals, each of which is older than the
  release already recorded, so every escrow is re-folded (the anomaly superseded, the
  release applied).

Every run ends with the same tables (all escrows released, one current history row per
event, no current anomaly); the table shows events/s and the ratio to chain order.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.database import create_engine, normalise_database_url
from fusion_prime.platform.observability import configure_logging
from fusion_prime.settlement.handlers import SUBSCRIPTION, handle_chain_events
from fusion_prime.settlement.spec import SPEC
from tests.harness import DatabaseFactory, admin_url_from_env, count_rows
from tests.settlement.factory import Escrow

BATCH = 500


def _escrows(n: int) -> list[list[Envelope]]:
    out = []
    for _ in range(n):
        e = Escrow()
        out.append([e.deployed(required=2), e.approved(e.payer), e.approved(e.payee), e.released()])
    return out


def _batches(events: Sequence[Envelope]) -> list[list[Envelope]]:
    return [list(events[i : i + BATCH]) for i in range(0, len(events), BATCH)]


def deliveries(escrows: list[list[Envelope]], seed: int = 7) -> dict[str, list[list[Envelope]]]:
    rng = random.Random(seed)
    in_order = [x for lifecycle in escrows for x in lifecycle]
    shuffled = []
    for batch in _batches(in_order):
        rng.shuffle(batch)
        shuffled.append(batch)
    first = [x for lc in escrows for x in (lc[0], lc[3])]
    late = [x for lc in escrows for x in (lc[1], lc[2])]
    return {
        "chain order": _batches(in_order),
        "shuffled within batches": shuffled,
        "late approvals (re-fold)": _batches(first) + _batches(late),
    }


async def _run(url: str, batches: list[list[Envelope]]) -> float:
    engine = create_engine(normalise_database_url(url, service="bench"), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        started = time.perf_counter()
        for batch in batches:
            async with sessions() as session, session.begin():
                await consume_batch(session, SUBSCRIPTION, batch, handle_chain_events)
        return time.perf_counter() - started
    finally:
        await engine.dispose()


async def main(n: int, repeat: int) -> None:
    console = Console()
    configure_logging("WARNING")
    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        for name, batches in deliveries(_escrows(n)).items():
            url = await factory.create("settlement", SPEC.migrations_dir)
            try:
                times.setdefault(name, []).append(await _run(url, batches))
                assert await count_rows(url, "escrows", "status = 'released'") == n
                current = "superseded_at IS NULL"
                assert await count_rows(url, "escrow_history", current) == 4 * n
                assert await count_rows(url, "escrow_anomalies", current) == 0
            finally:
                await factory.drop(url)
    events = 4 * n
    base = min(times["chain order"])
    table = Table(title=f"settlement: delivery order, {n} escrows x 4 events, best of {repeat}")
    for col in ("delivery", "events", "seconds", "events/s", "time vs chain order"):
        table.add_column(col, justify="right")
    for name, ts in times.items():
        best = min(ts)
        table.add_row(
            name, str(events), f"{best:.2f}", f"{events / best:,.0f}", f"{best / base:.2f}x"
        )
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--escrows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.escrows, args.repeat))
