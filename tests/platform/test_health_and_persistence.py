"""Health endpoints, problem+json, metrics, and persistence across kill -9."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from fusion_prime.platform.admin import ensure_database
from fusion_prime.platform.embedded import EmbeddedPostgres
from tests.conftest import MakeDatabase
from tests.harness import ServiceProcess, asgi_client, fetch, running
from tests.platform.testapp import SPEC


async def test_health_shapes_metrics_and_problem_json(make_database: MakeDatabase) -> None:
    url = await make_database("testapp", SPEC.migrations_dir)
    async with asgi_client(SPEC, url) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}

        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ok"
        assert body["service"] == "testapp"
        db = body["database"]
        assert db["dialect"] == "postgresql"
        assert db["revision"] == "0001"
        assert db["at_head"] is True
        assert db["database"].startswith("fp_t_testapp_")
        assert isinstance(db["embedded"], bool)
        assert db["server_version"]
        beats = await fetch(url, "SELECT service, beat_at FROM fp_heartbeat")
        assert [r["service"] for r in beats] == ["testapp"]
        assert beats[0]["beat_at"].isoformat() == db["heartbeat_at"]

        missing = await client.get("/notes/999", headers={"X-Request-ID": "abc123"})
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["X-Request-ID"] == "abc123"
        assert missing.json()["status"] == 404

        bad = await client.post("/notes", json={"body": ""})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in bad.json()["errors"]] == ["body"]
        assert await fetch(url, "SELECT * FROM notes") == []

        metrics = (await client.get("/metrics")).text
        assert 'fp_database_up{service="testapp"} 1.0' in metrics
        assert "fp_database_errors_total" in metrics
        assert "fp_http_request_duration_seconds_bucket" in metrics


async def test_row_survives_kill_9_and_restart(make_database: MakeDatabase, log_dir: Path) -> None:
    url = await make_database("testapp", SPEC.migrations_dir)
    proc = ServiceProcess.for_module("tests.platform.testapp", url, log_dir)
    with running(proc):
        created = httpx.post(
            f"{proc.base_url}/notes", json={"body": "escrow 0xabc"}, timeout=5, headers=proc.headers
        )
        assert created.status_code == 201
        note_id = created.json()["id"]
        proc.kill9()
        rows = await fetch(url, "SELECT body FROM notes WHERE id = $1", note_id)
        assert [r["body"] for r in rows] == ["escrow 0xabc"]
        proc.start()
        proc.wait_ready()
        again = httpx.get(f"{proc.base_url}/notes/{note_id}", timeout=5, headers=proc.headers)
        assert again.json() == {"id": note_id, "body": "escrow 0xabc"}


async def test_readiness_follows_the_database_without_restart(
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
            ready = f"{proc.base_url}/health/ready"
            assert httpx.get(ready, timeout=30).status_code == 200
            server.stop(mode="immediate")
            down = httpx.get(ready, timeout=30)
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            assert httpx.get(f"{proc.base_url}/health/live", timeout=30).status_code == 200
            metrics = httpx.get(f"{proc.base_url}/metrics", timeout=30).text
            assert 'fp_database_up{service="testapp"} 0.0' in metrics
            server.start()
            deadline = time.monotonic() + 90
            status = 0
            while time.monotonic() < deadline and status != 200:
                status = httpx.get(ready, timeout=30).status_code
                time.sleep(0.2)
            assert status == 200
            assert proc.process is not None
            assert proc.process.poll() is None
    finally:
        server.stop(mode="immediate")
