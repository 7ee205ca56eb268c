"""Platform benchmark: per-test database setup, service start-to-ready, `fusion-prime up`.

Run: .venv/bin/python -m bench.platform
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fusion_prime.platform.admin import asyncpg_dsn, quote_ident
from fusion_prime.platform.database import normalise_database_url
from fusion_prime.platform.migrations import upgrade_url
from tests.harness import DatabaseFactory, ServiceProcess, admin_url_from_env
from tests.platform.testapp import SPEC

RUNS = 30


async def _per_test_setup(factory: DatabaseFactory) -> tuple[list[float], list[float]]:
    import asyncpg

    await factory.template("testapp", SPEC.migrations_dir)  # once per test run, not per test
    cloned: list[float] = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        url = await factory.create("testapp", SPEC.migrations_dir)
        cloned.append(time.perf_counter() - t0)
        await factory.drop(url)
    naive: list[float] = []
    for i in range(RUNS // 3):
        name = f"fp_t_bench_naive_{os.getpid()}_{i}"
        t0 = time.perf_counter()
        conn = await asyncpg.connect(asyncpg_dsn(factory.admin_url))
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        await conn.close()
        await upgrade_url(
            normalise_database_url(factory.url(name), service="bench"), SPEC.migrations_dir
        )
        naive.append(time.perf_counter() - t0)
        await factory.drop(factory.url(name))
    return cloned, naive


def _start_to_ready(url: str, log_dir: Path, runs: int = 5) -> list[float]:
    times = []
    for _ in range(runs):
        proc = ServiceProcess.for_module("tests.platform.testapp", url, log_dir)
        t0 = time.perf_counter()
        proc.start()
        proc.wait_ready(timeout=60)
        times.append(time.perf_counter() - t0)
        proc.terminate()
    return times


def _up(data_dir: Path) -> float:
    env = {**os.environ, "FP_DATA_DIR": str(data_dir)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    elapsed = float("nan")
    for line in proc.stdout:
        if line.startswith("ready in"):
            elapsed = time.perf_counter() - t0
            break
        if "not ready" in line:
            break
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return elapsed


def main() -> None:
    console = Console()
    admin_url, _server = admin_url_from_env()
    factory = DatabaseFactory(admin_url)
    cloned, naive = asyncio.run(_per_test_setup(factory))
    with tempfile.TemporaryDirectory() as tmp:
        url = asyncio.run(factory.create("testapp", SPEC.migrations_dir))
        ready = _start_to_ready(url, Path(tmp))
        asyncio.run(factory.drop(url))
        cold = _up(Path(tmp) / "up")
        warm = _up(Path(tmp) / "up")

    table = Table(title="platform")
    for col in ("measure", "median", "min", "max", "baseline / target"):
        table.add_column(col)

    def ms(xs: list[float]) -> tuple[str, str, str]:
        return (
            f"{statistics.median(xs) * 1000:.1f} ms",
            f"{min(xs) * 1000:.1f} ms",
            f"{max(xs) * 1000:.1f} ms",
        )

    table.add_row(
        "per-test database (template clone)",
        *ms(cloned),
        f"naive create+migrate median {statistics.median(naive) * 1000:.1f} ms; target <= 50 ms",
    )
    table.add_row("service start-to-ready", *ms(ready), "target <= 3 s")
    table.add_row(
        "`fusion-prime up` cold (fresh data dir)", f"{cold:.2f} s", "", "", "target <= 15 s"
    )
    table.add_row("`fusion-prime up` warm (data kept)", f"{warm:.2f} s", "", "", "")
    console.print(table)


if __name__ == "__main__":
    main()
