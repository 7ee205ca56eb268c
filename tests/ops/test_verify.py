"""`fusion-prime verify` against real service processes, and its judgement of answers."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fusion_prime.ops.verify import Endpoint, check, endpoint, judge, read_targets_file
from fusion_prime.platform.admin import ensure_database
from fusion_prime.platform.embedded import EmbeddedPostgres
from tests.conftest import MakeDatabase
from tests.harness import REPO_ROOT, ServiceProcess, running
from tests.platform.testapp import SPEC

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EP = Endpoint("svc", "http://svc/health/ready")


def _body(**db: object) -> dict[str, object]:
    database: dict[str, object] = {
        "dialect": "postgresql",
        "embedded": False,
        "revision": "0002",
        "head": "0002",
        "at_head": True,
        "heartbeat_at": NOW.isoformat(),
    }
    database.update(db)
    return {"status": "ok", "service": "svc", "database": database}


def _problems(status: int, body: object, production: bool = True) -> list[str]:
    return judge(
        EP, status, body, expect_production=production, max_heartbeat_age=60, now=NOW
    ).problems


def test_judge_accepts_a_healthy_production_answer() -> None:
    assert _problems(200, _body()) == []


def test_judge_names_each_problem() -> None:
    assert "not postgresql" in _problems(200, _body(dialect="sqlite"))[0]
    assert "not at head" in _problems(200, _body(at_head=False, revision="0001"))[0]
    assert "embedded" in _problems(200, _body(embedded=True))[0]
    assert _problems(200, _body(embedded=True), production=False) == []
    stale = (NOW - timedelta(minutes=5)).isoformat()
    assert "heartbeat is 300 s old" in _problems(200, _body(heartbeat_at=stale))[0]
    assert "no heartbeat" in _problems(200, _body(heartbeat_at=None))[0]
    down = _problems(503, {"status": "unavailable", "error": "ConnectionRefusedError"})
    assert down == ["HTTP 503 (not ready)", "no database report (ConnectionRefusedError)"]
    assert _problems(200, "<html>") == ["the answer is not a JSON object"]


def test_targets_file_and_urls(tmp_path: Path) -> None:
    listing = tmp_path / "targets.txt"
    listing.write_text("# comment\nsettlement https://a.run.app\n\nhttp://127.0.0.1:8102/\n")
    assert read_targets_file(listing) == [
        Endpoint("settlement", "https://a.run.app/health/ready"),
        Endpoint("127.0.0.1", "http://127.0.0.1:8102/health/ready"),
    ]
    assert endpoint("localhost:8101/health/ready").url == "http://localhost:8101/health/ready"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


async def test_verify_passes_on_a_running_service(
    make_database: MakeDatabase, log_dir: Path
) -> None:
    url = await make_database("testapp", SPEC.migrations_dir)
    proc = ServiceProcess.for_module("tests.platform.testapp", url, log_dir)
    with running(proc):
        [verdict] = check([endpoint(proc.base_url, "testapp")], max_heartbeat_age=30)
        assert verdict.ok, verdict.problems
        assert verdict.dialect == "postgresql"
        assert verdict.revision == verdict.head == "0001"
        assert verdict.service == "testapp"
        assert verdict.heartbeat_age is not None
        assert abs(verdict.heartbeat_age) < 30
        result = _cli(proc.base_url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout
        # a production deploy must not be on the embedded server
        production = _cli(proc.base_url, "--expect-production", "--json")
        if verdict.embedded:
            assert production.returncode == 1
            assert "embedded" in production.stdout
        else:
            assert production.returncode == 0


async def test_verify_fails_when_the_database_server_is_stopped(
    tmp_path: Path, log_dir: Path
) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata", settings={"fsync": "off"})
    admin = server.start()
    try:
        await ensure_database(admin, "fp_testapp")
        proc = ServiceProcess.for_module(
            "tests.platform.testapp", server.url("fp_testapp"), log_dir
        )
        proc.args = [*proc.args, "--migrate"]
        with running(proc):
            assert check([endpoint(proc.base_url)])[0].ok
            server.stop(mode="immediate")
            [verdict] = check([endpoint(proc.base_url)], timeout=20)
            assert not verdict.ok
            assert verdict.status == 503
            assert "HTTP 503 (not ready)" in verdict.problems
            result = _cli(proc.base_url, "--timeout", "20")
            assert result.returncode == 1
            assert "FAIL" in result.stdout
    finally:
        server.stop(mode="immediate")


def test_verify_fails_on_an_unreachable_service_and_needs_a_target(tmp_path: Path) -> None:
    from tests.harness import free_port

    [verdict] = check([endpoint(f"http://127.0.0.1:{free_port()}")], timeout=2)
    assert verdict.problems[0].startswith("unreachable")
    assert _cli().returncode == 2
