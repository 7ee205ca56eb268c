"""Relayer benchmark: backfill from a local node into settlement's tables, and head latency.

Run: .venv/bin/python -m bench.relayer [--escrows N] [--per-block K] [--baseline-seconds S]
     [--latency-seconds S] [--layout split|inprocess|both]

1. Backfill, end to end: a local anvil (tools/evm) with the committed EscrowFactory; N
   escrows, each with 4 events (deployed, approved by payer, approved by payee, released)
   sent as real transactions, K per block (4N events over 4N/K blocks). Then, on a fresh
   database and the postgres broker, either the recommended production layout (`split`):
   `fusion-prime settlement relay` (relayer + outbox relay) in one process and
   `fusion-prime serve settlement` without ETH_RPC_URL (settlement consumer, fold, outbox
   relay) in another; or (`inprocess`) one `serve settlement` with ETH_RPC_URL running all
   of it. The clock runs from the relayer's first checkpoint write until `chain_events`
   holds every event; the tables are then checked (every escrow released, no anomaly, one
   relayer_logs row per log). Baseline in the same run and layout: the same chain with
   SETTLEMENT_MAX_BLOCK_RANGE=1 (one eth_getLogs per block), for a bounded time.
2. Head-to-published latency: an anvil mining a block every second, one escrow created per
   block, a settlement process with SETTLEMENT_CONFIRMATIONS=12; for each log, the time
   from when the bench first saw its confirming block (block + 12, eth_blockNumber polled
   every 20 ms) to the relayer's transaction that published it (`relayer_logs.published_at`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.observability import configure_logging
from fusion_prime.settlement.chain import artifact
from fusion_prime.settlement.spec import SPEC
from tests.evm import Anvil, running_anvil
from tests.harness import (
    DatabaseFactory,
    ServiceProcess,
    admin_url_from_env,
    count_rows,
    create_bus_database_sync,
    fetch,
)
from tests.settlement.factory import FAST

CHAIN_ID = 31337
LAYOUTS = ("split", "inprocess")
# what only the relayer reads: `serve settlement` without them does not relay
_RELAYER_ONLY = frozenset(
    {"ETH_RPC_URL", "SETTLEMENT_CHAIN_ID", "SETTLEMENT_FACTORY_ADDRESS", "SETTLEMENT_START_BLOCK"}
)
ZERO16 = "00" * 16


def _rpc_batch(url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    answer = httpx.post(url, json=body, timeout=300).json()
    out = []
    for item in sorted(answer, key=lambda a: a["id"]):
        if "error" in item:
            raise RuntimeError(item["error"])
        out.append(item["result"])
    return out


def _deploy(node: Anvil) -> tuple[str, int, list[str]]:
    accounts = node.rpc("eth_accounts")
    tx = node.rpc(
        "eth_sendTransaction",
        [
            {
                "from": accounts[0],
                "data": artifact()["EscrowFactory"]["bytecode"],
                "gas": hex(6_000_000),
            }
        ],
    )
    node.rpc("evm_mine")
    receipt = node.rpc("eth_getTransactionReceipt", [tx])
    return receipt["contractAddress"].lower(), int(receipt["blockNumber"], 16), accounts


def _selector(name: str) -> str:
    from web3 import Web3

    return Web3.keccak(text=name).hex().removeprefix("0x")[:8]


def _word(value: int | str) -> str:
    if isinstance(value, str):
        return value.removeprefix("0x").rjust(64, "0")
    return hex(value)[2:].rjust(64, "0")


def _fill_chain(node: Anvil, escrows: int, per_block: int) -> tuple[str, int, float]:
    """Deploy and run `escrows` lifecycles; (factory, deploy block, seconds taken)."""
    started = time.perf_counter()
    node.rpc("evm_setAutomine", [False])
    factory, block, accounts = _deploy(node)
    payer, payee, arbiter = accounts[:3]
    amount = 10**12
    create = (
        "0x"
        + _selector("create(address,address,address,uint256,uint64,uint8,bytes16)")
        + (
            _word(payee)
            + _word(arbiter)
            + _word(0)
            + _word(amount)
            + _word(0)
            + _word(2)
            + ZERO16 * 2
        )
    )
    approve = "0x" + _selector("approve(bytes16)") + ZERO16 * 2
    release = "0x" + _selector("release(bytes16)") + ZERO16 * 2

    nonces: dict[str, int] = {}

    def send(txs: list[dict[str, Any]]) -> None:
        # explicit nonces: identical transactions sent at once would otherwise collide
        for t in txs:
            sender = t["from"]
            if sender not in nonces:
                nonces[sender] = int(node.rpc("eth_getTransactionCount", [sender, "pending"]), 16)
            t["nonce"] = hex(nonces[sender])
            nonces[sender] += 1
        for i in range(0, len(txs), per_block):
            _rpc_batch(node.url, [("eth_sendTransaction", [t]) for t in txs[i : i + per_block]])
            node.rpc("evm_mine")

    send(
        [
            {
                "from": payer,
                "to": factory,
                "data": create,
                "value": hex(amount),
                "gas": hex(1_500_000),
            }
            for _ in range(escrows)
        ]
    )
    logs = _rpc_batch(
        node.url,
        [("eth_getLogs", [{"fromBlock": hex(block), "toBlock": "latest", "address": factory}])],
    )[0]
    addresses = ["0x" + lg["topics"][1][-40:] for lg in logs]
    assert len(addresses) == escrows, (len(addresses), escrows)
    lifecycle = []
    for who, data in ((payer, approve), (payee, approve), (arbiter, release)):
        lifecycle += [{"from": who, "to": a, "data": data, "gas": hex(200_000)} for a in addresses]
    send(lifecycle)
    return factory, block, time.perf_counter() - started


def _env(node: Anvil, factory: str, block: int, **extra: str) -> dict[str, str]:
    # the process's other loops (commands, webhook deliveries) poll at their production
    # interval: the tests' 20 polls a second of each took a tenth of the process's CPU here
    return (
        {"SETTLEMENT_WEBHOOK_KEY": FAST["SETTLEMENT_WEBHOOK_KEY"]}
        | {
            "ETH_RPC_URL": node.url,
            "SETTLEMENT_CHAIN_ID": str(CHAIN_ID),
            "SETTLEMENT_FACTORY_ADDRESS": factory,
            "SETTLEMENT_START_BLOCK": str(block),
            "FP_LOG_LEVEL": "WARNING",
        }
        | extra
    )


async def _backfill(
    factory_db: DatabaseFactory,
    node: Anvil,
    factory: str,
    block: int,
    events: int,
    limit: float,
    logs: Any,
    layout: str,
    **extra: str,
) -> tuple[int, float]:
    """(events in settlement's tables, seconds) for a settlement process relaying the chain."""
    db = await factory_db.create("settlement", SPEC.migrations_dir)
    env = _env(node, factory, block, **extra)
    env["FP_BUS_URL"] = create_bus_database_sync(db)
    procs = []
    if layout == "split":
        # the recommended layout: `fusion-prime settlement relay` (relayer + its outbox
        # relay) in one process, `serve settlement` without ETH_RPC_URL (consumer, fold,
        # the other outbox rows) in another: one core each
        relay_env = {k: v for k, v in env.items() if k not in _RELAYER_ONLY}
        service = ServiceProcess.for_service("settlement", db, logs, extra_env=relay_env)
        args = [sys.executable, "-m", "fusion_prime.cli", "settlement", "relay"]
        relay = ServiceProcess(args, service.env | env, 0, logs / f"relay-{service.port}.log")
        procs = [service, relay]
    else:
        procs = [ServiceProcess.for_service("settlement", db, logs, extra_env=env)]
    for proc in procs:
        proc.start()
    # one connection for the polls (a connection per poll, 20 a second, was PostgreSQL
    # CPU taken from the system measured)
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        # the clock starts when the relayer wrote its checkpoint row (process start-up,
        # seconds on this loaded machine, is not the relayer's throughput)
        while not await conn.fetchval("SELECT count(*) FROM relayer_checkpoints"):
            await asyncio.sleep(0.02)
        started = time.perf_counter()
        done = 0
        while time.perf_counter() - started < limit:
            # max(id) is one index probe and never below the count (identity values are
            # not reused): the count(*) of every poll was ~15 ms of PostgreSQL CPU at
            # 100,000 rows, ten times a second, taken from the system measured
            top = await conn.fetchval("SELECT coalesce(max(id), 0) FROM chain_events")
            if top >= events:
                done = await conn.fetchval("SELECT count(*) FROM chain_events")
                if done >= events:
                    break
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        done = await conn.fetchval("SELECT count(*) FROM chain_events")
    finally:
        await conn.close()
        for proc in procs:
            proc.terminate()
    if done >= events:
        assert await count_rows(db, "escrows", "status <> 'released'") == 0
        assert await count_rows(db, "escrow_anomalies") == 0
        assert await count_rows(db, "relayer_logs") == events
    await factory_db.drop(db)
    return done, seconds


async def _latency(factory_db: DatabaseFactory, seconds: float, logs: Any) -> list[float]:
    with running_anvil("--block-time", "1") as node:
        factory, block, accounts = _deploy_automine(node)
        db = await factory_db.create("settlement", SPEC.migrations_dir)
        env = _env(
            node,
            factory,
            block,
            SETTLEMENT_CONFIRMATIONS="12",
            SETTLEMENT_RELAYER_POLL_INTERVAL="0.1",
        )
        env["FP_BUS_URL"] = create_bus_database_sync(db)
        seen: dict[int, float] = {}
        stop = threading.Event()

        def watch() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
                    n = int(client.post(node.url, json=body).json()["result"], 16)
                    seen.setdefault(n, time.time())
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc = ServiceProcess.for_service("settlement", db, logs, extra_env=env).start()
        proc.wait_ready(120)
        create = (
            "0x"
            + _selector("create(address,address,address,uint256,uint64,uint8,bytes16)")
            + (
                _word(accounts[1])
                + _word(accounts[2])
                + _word(0)
                + _word(1000)
                + _word(0)
                + _word(2)
                + ZERO16 * 2
            )
        )
        try:
            end = time.time() + seconds
            while time.time() < end:
                node.rpc(
                    "eth_sendTransaction",
                    [{"from": accounts[0], "to": factory, "data": create, "value": hex(1000)}],
                )
                await asyncio.sleep(1.0)
            await asyncio.sleep(16)  # the last ones get their 12 confirmations
        finally:
            stop.set()
            proc.terminate()
        rows = await fetch(db, "SELECT block_number, published_at FROM relayer_logs")
        await factory_db.drop(db)
    return [
        r["published_at"].timestamp() - seen[r["block_number"] + 12]
        for r in rows
        if r["block_number"] + 12 in seen
    ]


def _deploy_automine(node: Anvil) -> tuple[str, int, list[str]]:
    accounts = node.rpc("eth_accounts")
    tx = node.rpc(
        "eth_sendTransaction",
        [{"from": accounts[0], "data": artifact()["EscrowFactory"]["bytecode"]}],
    )
    while (receipt := node.rpc("eth_getTransactionReceipt", [tx])) is None:
        time.sleep(0.1)
    return receipt["contractAddress"].lower(), int(receipt["blockNumber"], 16), accounts


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def main(
    escrows: int,
    per_block: int,
    baseline_seconds: float,
    latency_seconds: float,
    layouts: Sequence[str],
) -> None:
    import tempfile
    from pathlib import Path

    console = Console(width=140)
    configure_logging("WARNING")
    admin_url, _server = admin_url_from_env()
    factory_db = DatabaseFactory(admin_url)
    logs = Path(tempfile.mkdtemp(prefix="bench-relayer-"))
    events = 4 * escrows
    console.print(f"load average at start: {_load()}")
    runs: list[tuple[str, int, float, int, float]] = []
    with running_anvil("--gas-limit", "3000000000", "--no-mining") as node:
        console.print(f"filling the chain: {escrows} escrows, {events} events, {per_block}/block")
        factory, block, fill_s = _fill_chain(node, escrows, per_block)
        head = int(node.rpc("eth_blockNumber"), 16)
        console.print(f"  {head - block} blocks in {fill_s:.1f} s")
        for layout in layouts:
            console.print(f"{layout}: relaying (ranges of 2000) ...")
            n, s = await _backfill(
                factory_db,
                node,
                factory,
                block,
                events,
                1800,
                logs,
                layout,
                SETTLEMENT_CONFIRMATIONS="0",
            )
            console.print(
                f"  backfill: {n} events in {s:.2f} s = {n / s:,.0f} events/s (load {_load()})"
            )
            console.print(f"{layout} baseline: one eth_getLogs per block, {baseline_seconds:.0f} s")
            bn, bs = await _backfill(
                factory_db,
                node,
                factory,
                block,
                events,
                baseline_seconds,
                logs,
                layout,
                SETTLEMENT_CONFIRMATIONS="0",
                SETTLEMENT_MAX_BLOCK_RANGE="1",
            )
            console.print(
                f"  baseline: {bn} events in {bs:.2f} s = {bn / bs:,.0f} events/s (load {_load()})"
            )
            runs.append((layout, n, s, bn, bs))
    lat: list[float] = []
    if latency_seconds > 0:
        console.print(f"latency: block every second, 12 confirmations, {latency_seconds:.0f} s")
        lat = await _latency(factory_db, latency_seconds, logs)

    table = Table(title="relayer: local anvil -> settlement tables (2-core shared machine)")
    for col in ("layout", "path", "events", "seconds", "events/s", "vs baseline", "target"):
        table.add_column(col, justify="right")
    for layout, n, s, bn, bs in runs:
        ratio = (n / s) / (bn / bs) if bn else float("inf")
        table.add_row(
            layout,
            "backfill (<= 2000 blocks/call)",
            str(n),
            f"{s:.2f}",
            f"{n / s:,.0f}",
            f"{ratio:.2f}x",
            ">= 3,000",
        )
        table.add_row(
            layout,
            "baseline (1 block/call)",
            str(bn),
            f"{bs:.2f}",
            f"{bn / bs:,.0f}",
            "",
            "",
        )
    console.print(table)
    lt = Table(title="head-to-published latency, 12 confirmations, 1 block/s")
    for col in ("events", "p50 s", "p99 s", "max s", "target"):
        lt.add_column(col, justify="right")
    if lat:
        lt.add_row(
            str(len(lat)),
            f"{statistics.median(lat):.3f}",
            f"{_pct(lat, 0.99):.3f}",
            f"{max(lat):.3f}",
            "p99 <= 1 s",
        )
    if lat:
        console.print(lt)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--escrows", type=int, default=25_000)
    parser.add_argument("--per-block", type=int, default=50)
    parser.add_argument("--baseline-seconds", type=float, default=60)
    parser.add_argument("--latency-seconds", type=float, default=60, help="0: no latency run")
    parser.add_argument(
        "--layout",
        choices=(*LAYOUTS, "both"),
        default="both",
        help="split: `settlement relay` + `serve settlement` (recommended); inprocess: one "
        "`serve settlement` with ETH_RPC_URL",
    )
    a = parser.parse_args()
    layouts = LAYOUTS if a.layout == "both" else (a.layout,)
    asyncio.run(main(a.escrows, a.per_block, a.baseline_seconds, a.latency_seconds, layouts))
