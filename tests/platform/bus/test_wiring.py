"""Which consumers a service gets: the registry's, plus explicit test-only triples."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_prime.platform.bus.consumer import Consumer
from fusion_prime.platform.bus.registry import TOPICS
from fusion_prime.platform.bus.wiring import bus_url, consumers_for
from fusion_prime.platform.settings import BaseServiceSettings
from fusion_prime.platform.spec import ServiceSpec
from tests.platform.bus.consumerapp import SPEC, TOPIC


def test_registry_subscriptions_of_a_service_become_its_consumers() -> None:
    risk = ServiceSpec(name="risk", db_slug="risk", default_port=1, migrations_dir=Path("."))
    found = {(c.topic, c.subscription, c.handler, c.max_attempts) for c in consumers_for(risk)}
    expected = {
        (t.name, s.name, s.handler, s.max_attempts)
        for t in TOPICS
        for s in t.subscriptions
        if s.service == "risk"
    }
    assert found == expected
    assert {s for _, s, _, _ in found} == {"risk-events-consumer", "risk-engine-prices-consumer"}


def test_explicit_triples_do_not_touch_the_registry() -> None:
    assert [(c.topic, c.subscription) for c in consumers_for(SPEC)] == [
        (TOPIC, "test-stream-consumer")
    ]
    assert all(s.name != "test-stream-consumer" for t in TOPICS for s in t.subscriptions)
    twice = ServiceSpec(
        name="x",
        db_slug="x",
        default_port=1,
        migrations_dir=Path("."),
        consumes=(Consumer(TOPIC, "dup", "a:b"), Consumer(TOPIC, "dup", "a:b")),
    )
    with pytest.raises(ValueError, match="declared twice"):
        consumers_for(twice)


def test_bus_url_errors_name_fp_bus_url() -> None:
    with pytest.raises(ValueError, match="FP_BUS_URL is not set"):
        bus_url(BaseServiceSettings(), "svc")
    with pytest.raises(ValueError, match="FP_BUS_URL uses 'sqlite'"):
        bus_url(BaseServiceSettings(FP_BUS_URL="sqlite:///bus.db"), "svc")


def test_events_cli_refuses_a_missing_or_non_postgres_bus_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from fusion_prime.platform.bus.cli import app as events_cli

    monkeypatch.delenv("FP_BUS_URL", raising=False)
    result = CliRunner().invoke(events_cli, ["status"])
    assert result.exit_code == 2
    assert "FP_BUS_URL is not set" in " ".join(result.output.split())
    monkeypatch.setenv("FP_BUS_URL", "sqlite:///bus.db")
    result = CliRunner().invoke(events_cli, ["dead-letters"])
    assert result.exit_code == 2
    assert "FP_BUS_URL uses 'sqlite'" in " ".join(result.output.split())
