"""Load: rising request rates against settlement commands, compliance screening and risk
position writes until p99 exceeds 250 ms or errors appear; the knee of each, beside
pgbench figures of the same PostgreSQL server measured in the same run.

Run: .venv/bin/python -m bench.load [--step-seconds 5] [--rates 25,50,100,200,400]

The generator is this file's own asyncio loop (open loop: requests start on a fixed
schedule whatever the answers, so a slow server shows as latency, not as a lower offered
rate), not locust: locust brings gevent, a master/worker process model and a web UI to
measure what one loop over httpx measures on a 2-core machine, and its extra processes
would compete with the services for the same two cores. Everything is bounded: each rate
runs `--step-seconds`, at most 256 requests are in flight, and it stops at the knee.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.embedded import bin_dir
from fusion_prime.services import load_spec
from tests.harness import REPO_ROOT, DatabaseFactory, ServiceProcess, _env
from tests.reliability.contract import SERVICE_SECRETS
from tests.reliability.system import private_server

P99_LIMIT = 0.250
MAX_IN_FLIGHT = 256
RESULTS = REPO_ROOT / ".fusion-prime" / "reliability" / "load.json"
A, B, C = "0x" + "ab" * 20, "0x" + "ac" * 20, "0x" + "ad" * 20
RISK_PARAMS = {
    "ETH": {"ltv": "0.75", "liquidation_threshold": "0.80", "liquidation_bonus": "0.05"},
    "USDC": {"ltv": "0.85", "liquidation_threshold": "0.90", "liquidation_bonus": "0.02"},
}


@dataclass
class Step:
    target: str
    rate: int
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    achieved: float


Request = Callable[[httpx.AsyncClient, int], Any]


def _settlement(client: httpx.AsyncClient, i: int) -> Any:
    body = {
        "action": "create_escrow",
        "chain_id": 1,
        "payer": A,
        "payee": B,
        "arbiter": C,
        "asset": "ETH",
        "amount": str(1_000_000 + i),
        "approvals_required": 1,
    }
    return client.post("/commands", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})


def _compliance(client: httpx.AsyncClient, i: int) -> Any:
    return client.post("/sanctions/screen", json={"names": [f"Dmitri Kovalenko {i % 97}"]})


def _risk(client: httpx.AsyncClient, i: int) -> Any:
    body = {
        "positions": [
            {"asset": "ETH", "collateral": str(10**18 + i), "decimals": 18},
            {"asset": "USDC", "debt": str(1000 * 10**6), "decimals": 6},
        ]
    }
    return client.put(f"/accounts/load-{i % 5000}/positions", json=body)


TARGETS: dict[str, tuple[str, Request]] = {
    "settlement POST /commands": ("settlement", _settlement),
    "compliance POST /sanctions/screen": ("compliance", _compliance),
    "risk PUT /accounts/{id}/positions": ("risk", _risk),
}


async def run_step(
    base_url: str, target: str, make: Request, rate: int, seconds: float, headers: dict[str, str]
) -> Step:
    latencies: list[float] = []
    errors = 0
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, limits=limits, headers=headers
    ) as client:

        async def one(i: int) -> None:
            nonlocal errors
            async with in_flight:
                t0 = time.perf_counter()
                try:
                    r = await make(client, i)
                    if r.status_code >= 400:
                        errors += 1
                        return
                except httpx.HTTPError:
                    errors += 1
                    return
                latencies.append(time.perf_counter() - t0)

        total = int(rate * seconds)
        started = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        took = time.perf_counter() - started
    lat = sorted(latencies) or [float("inf")]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return Step(
        target,
        rate,
        total,
        len(latencies),
        errors,
        round(statistics.median(lat) * 1000, 1),
        round(p99 * 1000, 1),
        round(len(latencies) / took, 1),
    )


def pgbench(admin_url: str, database: str, seconds: int) -> dict[str, float]:
    """TPC-B-like and select-only transactions per second of the same server."""
    m = re.match(r"postgresql://([^@]+)@([^:]+):(\d+)/", admin_url)
    assert m, admin_url
    user, host, port = m.groups()
    base = [str(bin_dir() / "pgbench"), "-h", host, "-p", port, "-U", user]
    subprocess.run([*base, "-i", "-q", "-s", "2", database], check=True, capture_output=True)
    out: dict[str, float] = {}
    for name, extra in (("tpcb", []), ("select", ["-S"])):
        done = subprocess.run(
            [*base, "-c", "8", "-j", "2", "-T", str(seconds), *extra, database],
            check=True,
            capture_output=True,
            text=True,
        )
        tps = re.search(r"tps = ([\d.]+)", done.stdout)
        assert tps, done.stdout
        out[name] = float(tps.group(1))
    return out


def _auth(proc: ServiceProcess) -> dict[str, str]:
    """The process's API key header (issue 13's harness; none before auth existed)."""
    return dict(getattr(proc, "headers", {}))


async def prepare(procs: dict[str, ServiceProcess], compliance_db: str) -> None:
    async with httpx.AsyncClient(timeout=30, headers=_auth(procs["risk"])) as http:
        for asset, p in RISK_PARAMS.items():
            decimals = 18 if asset == "ETH" else 6
            r = await http.put(
                f"{procs['risk'].base_url}/risk-parameters/{asset}",
                json={**p, "decimals": decimals, "max_price_age_seconds": 3600},
            )
            assert r.status_code == 201, r.text
    sdn = REPO_ROOT / "tests" / "compliance" / "fixtures" / "sdn.csv"
    done = subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "compliance", "load-sanctions", str(sdn)],
        env=_env(compliance_db, None),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def main(rates: list[int], step_seconds: float, pgbench_seconds: int) -> None:
    console = Console()
    steps: list[Step] = []
    with private_server("load-pg") as server, tempfile.TemporaryDirectory() as logs:
        admin = server.url()
        factory = DatabaseFactory(admin)
        dbs = {s: await factory.create(s, load_spec(s).migrations_dir) for s in TARGETS_SERVICES}
        procs = {
            s: ServiceProcess.for_service(s, url, Path(logs), extra_env=SERVICE_SECRETS[s])
            for s, url in dbs.items()
        }
        try:
            for p in procs.values():
                p.start()
            for p in procs.values():
                await asyncio.to_thread(p.wait_ready, 120)
            await prepare(procs, dbs["compliance"])
            bench_db = (await factory.create("pgbench", None)).rsplit("/", 1)[1]
            pg = await asyncio.to_thread(pgbench, admin, bench_db, pgbench_seconds)
            for target, (service, make) in TARGETS.items():
                for rate in rates:
                    step = await run_step(
                        procs[service].base_url,
                        target,
                        make,
                        rate,
                        step_seconds,
                        _auth(procs[service]),
                    )
                    steps.append(step)
                    console.print(step)
                    if step.errors or step.p99_ms > P99_LIMIT * 1000:
                        break
        finally:
            for p in procs.values():
                p.terminate()
    table = Table(title=f"load: rising rates, {step_seconds:g} s each (p99 limit 250 ms)")
    for col in ("target", "rate/s", "ok", "errors", "p50 ms", "p99 ms", "achieved/s"):
        table.add_column(col)
    for s in steps:
        table.add_row(
            s.target,
            str(s.rate),
            str(s.ok),
            str(s.errors),
            str(s.p50_ms),
            str(s.p99_ms),
            str(s.achieved),
        )
    console.print(table)
    knees = {}
    for target in TARGETS:
        good = [
            s for s in steps if s.target == target and not s.errors and s.p99_ms <= P99_LIMIT * 1000
        ]
        knees[target] = max((s.rate for s in good), default=0)
    knee_table = Table(title="knee (highest rate with p99 <= 250 ms and no errors)")
    knee_table.add_column("target")
    knee_table.add_column("knee req/s")
    knee_table.add_column("x pgbench select tps")
    for target, knee in knees.items():
        knee_table.add_row(target, str(knee), f"{knee / pg['select']:.3f}")
    console.print(knee_table)
    console.print(
        f"pgbench on the same server (8 clients, {pgbench_seconds} s, scale 2): "
        f"TPC-B-like {pg['tpcb']:.0f} tps, select-only {pg['select']:.0f} tps"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "steps": [asdict(s) for s in steps],
                "knees": knees,
                "pgbench": pg,
                "step_seconds": step_seconds,
                "command": "python -m bench.load " + " ".join(sys.argv[1:]),
            },
            indent=2,
        )
    )


TARGETS_SERVICES = ("settlement", "compliance", "risk")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5,10,25,50,100,200,400")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(
        main([int(r) for r in args.rates.split(",")], args.step_seconds, args.pgbench_seconds)
    )
