"""`fusion-prime risk import`: all or nothing, with line numbers on bad input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT, count_rows, fetch, fetchval
from tests.risk.conftest import Risk, price_event


async def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """In a thread: the service app of the fixture runs in this event loop, and a pass of
    its book holding the evaluation lock must be able to finish while the CLI waits."""
    env = {**os.environ, "DATABASE_URL": url, "FP_ENV": "test", "PYTHONPATH": str(REPO_ROOT)}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fusion_prime.cli", "risk", "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


async def test_import_jsonl_and_csv_all_or_nothing(risk: Risk, tmp_path: Path) -> None:
    await risk.prices(price_event("ETH", "3000"), price_event("USDC", "1"))
    rows = []
    for i in range(300):
        rows.append(
            {"account": f"imp-{i}", "asset": "ETH", "collateral": str(10**18), "decimals": 18}
        )
        rows.append(
            {
                "account": f"imp-{i}",
                "asset": "USDC",
                "debt": str((1000 + 5 * i) * 10**6),
                "decimals": 6,
            }
        )
    good = tmp_path / "book.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = await _run(risk.url, str(good))
    assert res.returncode == 0, res.stderr
    assert await count_rows(risk.url, "positions") == 600
    assert await count_rows(risk.url, "account_state") == 300
    # imp-280: 2400 / 2400 = 1.00 -> margin_call; imp-299: 2400 / 2495 -> liquidation
    states = dict(await fetch(risk.url, "SELECT account_id, status FROM account_state"))
    assert states["imp-0"] == "healthy"
    assert states["imp-280"] == "margin_call"
    assert states["imp-299"] == "liquidation"
    assert await count_rows(risk.url, "outbox") == await count_rows(risk.url, "margin_events") > 0

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "account,asset,collateral,debt,decimals\n"
        "imp-0,ETH,5,0,18\n"
        "imp-1,DOGE,1,0,8\n"
        "imp-2,ETH,-3,0,18\n"
        "bad id,ETH,1,0,18\n"
    )
    res = await _run(risk.url, str(bad))
    assert res.returncode == 1
    for expected in ("line 3: asset: unknown asset DOGE", "line 4: collateral", "line 5: account"):
        assert expected in res.stderr, res.stderr
    # nothing written: imp-0 still holds one whole ETH
    assert (
        await fetchval(
            risk.url, "SELECT collateral FROM positions WHERE account_id='imp-0' AND asset='ETH'"
        )
        == 10**18
    )
    ok = tmp_path / "ok.csv"
    ok.write_text("account,asset,collateral,debt,decimals\nimp-0,ETH,5,0,18\n")
    assert (await _run(risk.url, str(ok))).returncode == 0
    assert await count_rows(risk.url, "positions", "account_id = 'imp-0'") == 1
