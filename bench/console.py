"""Console benchmark: `make up` to a console page showing every service ready, and page
render times with many accounts in risk.

Run: .venv/bin/python -m bench.console startup            (fresh clone, then warm)
     .venv/bin/python -m bench.console pages --data-dir D [--accounts N] [--requests R]

`startup` clones this repository into a temporary folder, runs `make up` there (creating
.venv from the lock file, from uv's package cache) and times until the console's overview,
signed in with <data dir>/admin.key, says all services are ready; then Ctrl-C and the same
again in the same clone (warm). `pages` needs a running `fusion-prime up` on D (after
`fusion-prime demo`): it adds N accounts to risk's database with COPY-like set inserts
(positions in an asset without a price feed, so no tick re-evaluates them; set-up, not
timed), signs in and requests each page R times in a row. The baseline, measured in the
same run, is the console's own /health/live (the HTTP floor of the same process) and the
service API call that dominates each page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import quantiles

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.admin import asyncpg_dsn
from fusion_prime.platform.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parents[1]
PAGES = ["/", "/accounts/demo-alice", "/accounts", "/escrows", "/prices", "/compliance", "/bus"]
# the API request behind each page that costs the most (baseline for its ratio)
BASELINE_API = {"/": ("risk", "/stats"), "/accounts/demo-alice": ("risk", "/accounts/demo-alice")}


def sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
    assert token, form.text[:500]
    r = client.post("/login", data={"api_key": key, "csrf_token": token[1], "next": "/"})
    if r.status_code != 303:
        raise SystemExit(f"sign-in refused: HTTP {r.status_code} {r.text[:300]}")


def p(values: list[float], q: int) -> float:
    return quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# -- startup --------------------------------------------------------------------------------


def _until_console_ready(data_dir: Path, started: float, timeout: float = 600) -> float:
    deadline = started + timeout
    client: httpx.Client | None = None
    while time.monotonic() < deadline:
        urls = data_dir / "local-urls.json"
        key_file = data_dir / "admin.key"
        try:
            if client is None and urls.exists() and key_file.exists():
                console = json.loads(urls.read_text())["console"]
                client = httpx.Client(base_url=console, timeout=10)
                sign_in(client, key_file.read_text().strip())
            if client is not None:
                page = client.get("/")
                if 'data-testid="all-ready" data-ready="yes"' in page.text:
                    client.close()
                    return time.monotonic() - started
        except (httpx.HTTPError, SystemExit, AssertionError):
            if client is not None:
                client.close()
            client = None
        time.sleep(0.1)
    raise SystemExit("the console did not show all services ready in time")


def _make_up(clone: Path, data_dir: Path) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "FP_BUS_URL"}}
    env["FP_DATA_DIR"] = str(data_dir)
    (data_dir / "local-urls.json").unlink(missing_ok=True)  # written by this run's `up`
    started = time.monotonic()
    proc = subprocess.Popen(
        ["make", "up"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        seconds = _until_console_ready(data_dir, started)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    return seconds, out


def startup() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fp-bench-console-"))
    try:
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        if (REPO / "tools" / "evm" / "node_modules").exists():
            # the chain tools are an npm install of their own (`make test` does it), not
            # part of `make up`: reuse them so both runs start the same stack
            shutil.copytree(REPO / "tools" / "evm" / "node_modules",
                            clone / "tools" / "evm" / "node_modules", symlinks=True)  # fmt: skip
        data_dir = tmp / "data"
        fresh, _ = _make_up(clone, data_dir)
        warm, _ = _make_up(clone, data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title="make up -> console overview shows every service ready")
    for col in ("run", "seconds", "target"):
        table.add_column(col)
    table.add_row("fresh clone (venv from the lock file, new data dir)", f"{fresh:.1f}", "<= 60")
    table.add_row("warm (same clone and data dir)", f"{warm:.1f}", "<= 15")
    Console().print(table)


# -- pages ----------------------------------------------------------------------------------


async def seed(url: str, n: int) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        have = await conn.fetchval("SELECT count(*) FROM accounts WHERE id LIKE 'bench-%'")
        if have < n:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO accounts (id) SELECT 'bench-' || i "
                    "FROM generate_series($1::int, $2::int) i",
                    have, n - 1,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO positions (account_id, asset, collateral, debt, decimals) "
                    "SELECT 'bench-' || i, 'BENCHX', 1000, 0, 0 "
                    "FROM generate_series($1::int, $2::int) i",
                    have, n - 1,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO account_state (account_id, status, known_tier, factor, "
                    "last_snapshot_at, evaluated_at) SELECT 'bench-' || i, "
                    "(ARRAY['healthy','warning','margin_call','liquidation'])[1 + i % 4], "
                    "(ARRAY['healthy','warning','margin_call','liquidation'])[1 + i % 4], "
                    "1.5, now() + interval '30 days', now() "
                    "FROM generate_series($1::int, $2::int) i",
                    have, n - 1,
                )  # fmt: skip
            await conn.execute("ANALYZE accounts; ANALYZE positions; ANALYZE account_state")
        return int(await conn.fetchval("SELECT count(*) FROM accounts"))
    finally:
        await conn.close()


def _times(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{path}: HTTP {r.status_code}")
    return out


def pages(data_dir: Path, accounts: int, requests: int) -> None:
    import asyncio

    urls = json.loads((data_dir / "local-urls.json").read_text())
    key = (data_dir / "admin.key").read_text().strip()
    total = asyncio.run(seed(EmbeddedPostgres(data_dir).url("fp_risk"), accounts))
    table = Table(
        title=f"console page render, {total:,} accounts in risk, {requests} requests each"
    )
    for col in ("request", "p50 ms", "p99 ms", "p99 / console floor p99"):
        table.add_column(col)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=urls["console"], timeout=30) as client:
        sign_in(client, key)
        _times(client, "/", 3)  # warm the pools
        floor = _times(client, "/health/live", requests)
        table.add_row(
            "baseline: console /health/live", f"{p(floor, 50):.1f}", f"{p(floor, 99):.1f}", "1.0"
        )
        for path in PAGES:
            t = _times(client, path, requests)
            table.add_row(f"page {path}", f"{p(t, 50):.1f}", f"{p(t, 99):.1f}",
                          f"{p(t, 99) / p(floor, 99):.1f}")  # fmt: skip
            if path in BASELINE_API:
                service, api = BASELINE_API[path]
                with httpx.Client(base_url=urls[service], timeout=30, headers=headers) as svc:
                    b = _times(svc, api, requests)
                table.add_row(f"  baseline: {service} {api} direct", f"{p(b, 50):.1f}",
                              f"{p(b, 99):.1f}", f"{p(b, 99) / p(floor, 99):.1f}")  # fmt: skip
    Console().print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("startup")
    pg = sub.add_parser("pages")
    pg.add_argument("--data-dir", type=Path, required=True)
    pg.add_argument("--accounts", type=int, default=1_000_000)
    pg.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    if args.what == "startup":
        startup()
    else:
        pages(args.data_dir, args.accounts, args.requests)


if __name__ == "__main__":
    main()
