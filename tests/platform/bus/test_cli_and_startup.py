"""`fusion-prime events publish` (all or nothing) and the bus checks before a service starts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusion_prime.platform.bus.cli import app as events_cli
from fusion_prime.platform.bus.envelope import Envelope
from tests.conftest import MakeDatabase
from tests.harness import ServiceProcess, count_rows, fetchval, running
from tests.platform.bus.consumerapp import MIGRATIONS
from tests.platform.bus.helpers import broker

REGISTRY_TOPIC = "settlement.events.v1"


def _lines(n: int) -> list[str]:
    return [
        Envelope(
            type="escrow.approved", source="ops", subject=f"0xescrow{i}", data={"i": i}
        ).to_json()
        for i in range(n)
    ]


async def _invoke(args: list[str]) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, events_cli, args)
    return result.exit_code, result.output


async def test_cli_publish_with_a_bad_line_publishes_nothing(
    bus_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FP_BUS_URL", bus_url)
    code, out = await _invoke(["migrate"])  # declares the registry subscriptions
    assert code == 0, out
    lines = _lines(5)
    bad = json.loads(lines[3])
    del bad["subject"]
    wrong_type = json.loads(lines[1])
    wrong_type["type"] = "price.updated"  # not an event type of this topic
    lines[3] = json.dumps(bad)
    lines[1] = json.dumps(wrong_type)
    path = tmp_path / "backfill.jsonl"
    path.write_text("\n".join([*lines, "{broken"]) + "\n")
    code, out = await _invoke(["publish", REGISTRY_TOPIC, str(path)])
    assert code == 1
    flat = " ".join(out.split())
    assert "line 2:" in flat
    assert "line 4: subject" in flat
    assert "line 6:" in flat
    assert "nothing published" in flat
    assert await count_rows(bus_url, "bus_messages") == 0

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_lines(4)) + "\n")
    code, out = await _invoke(["publish", REGISTRY_TOPIC, str(good)])
    assert code == 0, out
    # fanned out to both registry subscriptions of the topic
    assert await count_rows(bus_url, "bus_messages") == 8
    code, out = await _invoke(["status"])
    assert code == 0
    assert "risk-events-consumer" in out


async def test_consuming_service_without_fp_bus_url_refuses_with_one_line(
    make_database: MakeDatabase, log_dir: Path
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    proc = ServiceProcess.for_module("tests.platform.bus.consumerapp", db_url, log_dir)
    proc.start()
    code = await asyncio.to_thread(proc.wait_exit, 60)
    out = proc.log_text()
    assert code == 2
    refusal = [line for line in out.splitlines() if "FP_BUS_URL is not set" in line]
    assert len(refusal) == 1, out
    assert "Uvicorn running" not in out


async def test_service_refuses_an_unmigrated_bus_database_then_starts_on_a_migrated_one(
    make_database: MakeDatabase, bus_url: str, log_dir: Path
) -> None:
    db_url = await make_database("busconsumer", MIGRATIONS)
    empty_bus = await make_database("bus")  # no migrations
    proc = ServiceProcess.for_module(
        "tests.platform.bus.consumerapp", db_url, log_dir, extra_env={"FP_BUS_URL": empty_bus}
    )
    proc.start()
    assert await asyncio.to_thread(proc.wait_exit, 20) == 4
    assert "fusion-prime events migrate" in proc.log_text()

    ok = ServiceProcess.for_module(
        "tests.platform.bus.consumerapp", db_url, log_dir, extra_env={"FP_BUS_URL": bus_url}
    )
    with running(ok):
        pass
    async with broker(bus_url) as b:
        assert await b.pending("test-stream-consumer") == 0
    assert await fetchval(bus_url, "SELECT count(*) FROM bus_subscriptions") == 1


async def test_harness_gives_a_service_process_its_own_migrated_bus_database(
    make_database: MakeDatabase,
) -> None:
    from tests.harness import DatabaseFactory, create_bus_database_sync

    db_url = await make_database("busconsumer", MIGRATIONS)
    bus = await asyncio.to_thread(create_bus_database_sync, db_url)
    try:
        assert await fetchval(bus, "SELECT count(*) FROM bus_messages") == 0
        assert await fetchval(bus, "SELECT version_num FROM alembic_version") == "0003"
    finally:
        admin = db_url.rsplit("/", 1)[0] + "/postgres"
        await DatabaseFactory(admin).drop(bus)
