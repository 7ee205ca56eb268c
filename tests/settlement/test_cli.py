"""`fusion-prime settlement status|parked` against a real database."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import REPO_ROOT, _env
from tests.settlement.factory import Escrow, deliver, new_address


def _cli(db: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(db, {"COLUMNS": "250"})
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "settlement", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_status_and_parked(db: str, engine: AsyncEngine) -> None:
    e, waiting = Escrow(), Escrow()
    await deliver(
        engine, [e.deployed(), e.approved(new_address()), waiting.approved(waiting.payer)]
    )
    status = _cli(db, "status")
    assert status.returncode == 0, status.stderr
    assert "approver_not_allowed" in status.stdout
    assert "escrow.approved" in status.stdout  # the parked approval
    parked = _cli(db, "parked")
    assert parked.returncode == 0, parked.stderr
    assert waiting.address in parked.stdout
    assert e.address not in parked.stdout
    refused = _cli(None, "status")
    assert refused.returncode == 2
    assert "DATABASE_URL" in refused.stdout + refused.stderr
