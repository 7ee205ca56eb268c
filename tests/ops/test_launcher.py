"""`fusion-prime up`: starts the embedded server and every service, stops on Ctrl-C, keeps data."""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fusion_prime.platform.embedded import EmbeddedPostgres
from fusion_prime.services import service_names
from tests.evm import ensure_tools
from tests.harness import REPO_ROOT, auth_headers, fetchval, local_system_env


def _up(data_dir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.cli", "up"],
        cwd=REPO_ROOT,
        env=local_system_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready in") or "not ready" in line or time.monotonic() > deadline:
            break
    return proc, lines


def _stop(proc: subprocess.Popen[str], lines: list[str]) -> None:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    lines.extend(out.splitlines(keepends=True))


def _admin(data_dir: Path) -> dict[str, str]:
    return auth_headers((data_dir / "admin.key").read_text().strip())


def _demo_escrow(data_dir: Path, settlement: str) -> str:
    """`fusion-prime settlement demo-escrow` on up's chain; the escrow once settlement has it."""
    done = subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "settlement", "demo-escrow"],
        cwd=REPO_ROOT,
        env=local_system_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    escrow = json.loads(done.stdout[: done.stdout.rindex("}") + 1])["escrow"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(f"{settlement}/escrows/{escrow}", timeout=10, headers=_admin(data_dir))
        if r.status_code == 200 and r.json()["status"] == "approved":
            return escrow
        time.sleep(0.3)
    raise AssertionError(f"escrow {escrow} did not arrive approved in settlement")


async def test_up_serves_every_service_and_keeps_data(tmp_path: Path) -> None:
    ensure_tools()  # anvil installed: `up` starts a local chain for the relayer
    data_dir = tmp_path / "fp"
    proc, lines = _up(data_dir)
    try:
        text = "".join(lines)
        assert "evm chain (anvil)" in text, text
        assert any(line.startswith("ready in") for line in lines), text
        server = EmbeddedPostgres(data_dir)
        assert server.running()
        for name in service_names():
            match = re.search(rf"{name}\s+.*?(http://127\.0\.0\.1:\d+)", text)
            assert match, text
            ready = httpx.get(f"{match.group(1)}/health/ready", timeout=10)
            assert ready.status_code == 200
            assert ready.json()["database"]["embedded"] is True
        # the local admin key: printed once in the table, kept 0600, valid on every service
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        token = key_file.read_text().strip()
        assert token in text
        for name in service_names():
            match = re.search(rf"{name}\s+.*?(http://127\.0\.0\.1:\d+)", text)
            assert match
            who = httpx.get(f"{match.group(1)}/auth/whoami", headers=_admin(data_dir), timeout=10)
            assert who.status_code == 200, (name, who.text)
            assert who.json() == {
                "key_id": token.split("_")[1],
                "name": "local admin",
                "role": "admin",
            }
            assert httpx.get(f"{match.group(1)}/auth/whoami", timeout=10).status_code == 401
        settlement = re.search(r"settlement\s+.*?(http://127\.0\.0\.1:\d+)", text)
        assert settlement
        escrow = _demo_escrow(data_dir, settlement.group(1))
        admin = server.url()
        assert await fetchval(admin, "SELECT count(*) FROM pg_database WHERE datname = 'fp_bus'")
        conn_url = server.url("fp_bus")
        await fetchval(conn_url, "CREATE TABLE IF NOT EXISTS kept (v text)")
        await fetchval(conn_url, "INSERT INTO kept VALUES ('still here')")
    finally:
        _stop(proc, lines)
    assert proc.returncode == 0, "".join(lines)
    assert not EmbeddedPostgres(data_dir).running()

    proc, lines = _up(data_dir)
    try:
        assert any(line.startswith("ready in") for line in lines), "".join(lines)
        assert "starting embedded" in "".join(lines)
        assert token not in "".join(lines)  # shown once only
        assert (data_dir / "admin.key").read_text().strip() == token
        value = await fetchval(EmbeddedPostgres(data_dir).url("fp_bus"), "SELECT v FROM kept")
        assert value == "still here"
        # the chain was kept too (anvil --state): same factory, the relayer carries on
        url = EmbeddedPostgres(data_dir).url("fp_settlement")
        assert await fetchval(url, "SELECT status FROM escrows WHERE address = $1", escrow)
        text = "".join(lines)
        settlement = re.search(r"settlement\s+.*?(http://127\.0\.0\.1:\d+)", text)
        assert settlement
        assert _demo_escrow(data_dir, settlement.group(1)) != escrow
    finally:
        _stop(proc, lines)
    assert proc.returncode == 0
