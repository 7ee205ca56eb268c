"""Real processes: refusal to start without PostgreSQL, the start-up line, migrations check."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.conftest import MakeDatabase
from tests.harness import REPO_ROOT, ServiceProcess, _env, running


def _start_and_wait_exit(database_url: str | None, log_dir: Path, **env: str) -> tuple[int, str]:
    """Exit code and log of a process expected to stop by itself (a hang fails the test).

    "Fast" is shown by what the process did, not by wall time (a loaded machine makes any
    time bound flaky): it refused before the database line and before serving anything.
    """
    proc = ServiceProcess.for_module("tests.platform.testapp", database_url, log_dir, extra_env=env)
    proc.start()
    code = proc.wait_exit(timeout=60)
    return code, proc.log_text()


def test_missing_database_url_exits_fast_naming_the_variable(log_dir: Path) -> None:
    code, out = _start_and_wait_exit(None, log_dir)
    assert code != 0
    assert "Using database URL" not in out
    assert "DATABASE_URL" in out
    assert "fp-testapp-db-connection-string" in out
    assert "Uvicorn running" not in out


def test_sqlite_url_is_refused_as_not_postgresql(log_dir: Path) -> None:
    code, out = _start_and_wait_exit("sqlite+aiosqlite:///./settlement.db", log_dir)
    assert code != 0
    assert "Using database URL" not in out
    assert "Uvicorn running" not in out
    assert "only PostgreSQL is supported" in out
    assert not (REPO_ROOT / "settlement.db").exists()


def test_embedded_server_refused_in_production(embedded_admin_url: str, log_dir: Path) -> None:
    # a database on the embedded server (the marker setting is server-wide)
    url = make_url(embedded_admin_url).set(database="postgres").render_as_string(False)
    code, out = _start_and_wait_exit(url, log_dir, FP_ENV="production")
    assert code != 0
    assert "Uvicorn running" not in out
    assert "embedded" in out
    assert "FP_ENV=production" in out


async def test_refuses_database_not_at_head_unless_migrate(
    make_database: MakeDatabase, log_dir: Path
) -> None:
    url = await make_database("testapp")  # empty: no migrations applied
    with_pw = make_url(url).set(password="s3cr3t-pw").render_as_string(hide_password=False)
    code, out = _start_and_wait_exit(with_pw, log_dir)
    assert code == 4
    assert "fusion-prime migrate testapp" in out
    assert "s3cr3t-pw" not in out

    proc = ServiceProcess.for_module("tests.platform.testapp", with_pw, log_dir)
    proc.args = [*proc.args, "--migrate"]
    with running(proc):
        pass
    log = proc.log_text()
    assert log.count("Using database URL: postgresql+asyncpg://") == 1
    assert "***" in log
    assert "s3cr3t-pw" not in log


def test_harness_refuses_sqlite_test_database_url() -> None:
    env = _env(None, {"TEST_DATABASE_URL": "sqlite:///./tests.db"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/platform/test_database_guard.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "PostgreSQL only" in result.stdout + result.stderr


def test_unreachable_database_exits_after_bounded_retry(log_dir: Path) -> None:
    from tests.harness import free_port

    url = f"postgresql://fp:pw@127.0.0.1:{free_port()}/fp_nothing_listens_here"
    started = time.monotonic()
    code, out = _start_and_wait_exit(url, log_dir, FP_DB_CONNECT_TIMEOUT="1.5")
    assert code == 3
    # it kept retrying for the whole bound (a lower bound: load cannot make it flaky)
    assert time.monotonic() - started >= 1.5
    assert "did not answer within 1.5 s" in out
    assert ":pw@" not in out


def test_every_missing_setting_is_named_in_one_refusal_database_url_first(
    log_dir: Path,
) -> None:
    """settlement without DATABASE_URL and without SETTLEMENT_WEBHOOK_KEY names both."""
    proc = ServiceProcess.for_service("settlement", None, log_dir)
    proc.env.pop("SETTLEMENT_WEBHOOK_KEY", None)
    proc.env["SETTLEMENT_WEBHOOK_TIMEOUT"] = "-1"
    proc.start()
    assert proc.wait_exit(timeout=60) == 2
    [line] = [x for x in proc.log_text().splitlines() if "refusing to start" in x]
    assert "3 settings refused" in line
    first = line.index("DATABASE_URL")
    assert first < line.index("SETTLEMENT_WEBHOOK_KEY") < line.index("SETTLEMENT_WEBHOOK_TIMEOUT")
    assert "fp-settlement-db-connection-string" in line
    assert "Uvicorn running" not in proc.log_text()
