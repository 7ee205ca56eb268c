"""The generated deploy files: current in the repository, and right for the services."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fusion_prime.cli import app
from fusion_prime.ops.audit.engine import run_audit
from fusion_prime.ops.deploy_gen import (
    KNOWN_DB_SLUGS,
    TFVARS_NAME,
    known_services,
    shipped_services,
    stale_files,
    write_files,
)
from fusion_prime.platform.bus.registry import TOPICS
from fusion_prime.services import all_specs
from tests.harness import REPO_ROOT


def test_committed_deploy_files_are_up_to_date() -> None:
    stale = stale_files(REPO_ROOT / "deploy", shipped_services())
    assert stale == [], "run `.venv/bin/fusion-prime deploy generate` and commit"


def test_shipped_services_use_the_known_deploy_names() -> None:
    for spec in all_specs():
        assert KNOWN_DB_SLUGS[spec.name] == spec.db_slug


def _step(doc: dict, step_id: str) -> dict:
    return next(s for s in doc["steps"] if s["id"] == step_id)


def test_cloudbuild_for_each_service(tmp_path: Path) -> None:
    services = known_services(["settlement", "compliance", "risk", "oracle"])
    write_files(tmp_path, services)
    for svc in services:
        doc = yaml.safe_load((tmp_path / "cloudbuild" / f"{svc.name}.yaml").read_text())
        assert [s["id"] for s in doc["steps"]] == [
            "build",
            "push",
            "migrate",
            "deploy",
            "candidate-url",
            "verify",
            "promote",
        ]
        slug = svc.db_slug
        migrate = _step(doc, "migrate")["args"]
        assert migrate[:3] == ["run", "jobs", "deploy"]
        assert f"--args=migrate,{svc.name}" in migrate
        deploy = _step(doc, "deploy")["args"]
        assert deploy[:3] == ["run", "deploy", svc.name]
        for args in (migrate, deploy):
            assert f"--set-secrets=DATABASE_URL=fp-{slug}-db-connection-string:latest" in args
            assert any(a.endswith(f":${{_REGION}}:fp-{slug}-db") for a in args)
            assert f"--service-account=fp-{slug}-run@$PROJECT_ID.iam.gserviceaccount.com" in args
        assert "--no-allow-unauthenticated" in deploy
        assert "--allow-unauthenticated" not in deploy
        assert "--no-traffic" in deploy
        verify = _step(doc, "verify")
        assert verify["name"] == doc["images"][0]  # runs `fusion-prime verify` from the new image
        assert verify["args"][0] == "verify"
        assert "--expect-production" in verify["args"]
        assert _step(doc, "promote")["waitFor"] == ["verify"]
    oracle = (tmp_path / "cloudbuild" / "oracle.yaml").read_text()
    assert oracle.count("DATABASE_URL=fp-priceoracle-db-connection-string:latest") == 2
    assert oracle.count(":${_REGION}:fp-priceoracle-db\n") == 2


def test_generated_files_pass_the_audit_and_a_broken_one_does_not(tmp_path: Path) -> None:
    services = known_services(["settlement", "compliance", "risk"])
    write_files(tmp_path / "deploy", services)
    for svc in services:  # the code side: a ServiceSpec per service, as src/ will have
        spec = tmp_path / "src" / "pkg" / svc.name / "spec.py"
        spec.parent.mkdir(parents=True)
        spec.write_text(f'SPEC = ServiceSpec(name="{svc.name}", db_slug="{svc.db_slug}")\n')
    assert run_audit(tmp_path).findings == []

    path = tmp_path / "deploy" / "cloudbuild" / "risk.yaml"
    doc = yaml.safe_load(path.read_text())
    deploy = _step(doc, "deploy")
    deploy["args"] = [a for a in deploy["args"] if not a.startswith("--set-secrets")]
    path.write_text(yaml.safe_dump(doc))
    assert stale_files(tmp_path / "deploy", services) == ["cloudbuild/risk.yaml"]
    assert sorted(f.rule for f in run_audit(tmp_path).findings) == ["FP101"]


def test_tfvars_follow_the_event_registry(tmp_path: Path) -> None:
    write_files(tmp_path, known_services(["risk", "alerts"]))
    data = json.loads((tmp_path / "terraform" / TFVARS_NAME).read_text())
    assert data["databases"] == ["alert", "compliance", "priceoracle", "risk", "settlement"]
    assert set(data["services"]) == {"risk", "alerts"}
    assert data["services"]["risk"]["publishes"] == ["alerts.margin.v1"]
    assert data["services"]["risk"]["consumes"] == [
        "risk-engine-prices-consumer",
        "risk-events-consumer",
    ]
    assert set(data["topics"]) == {t.name for t in TOPICS}
    for topic in TOPICS:
        subs = data["topics"][topic.name]["subscriptions"]
        assert set(subs) == {s.name for s in topic.subscriptions}
        for s in topic.subscriptions:
            assert subs[s.name]["service"] == s.service
            assert 5 <= subs[s.name]["max_delivery_attempts"] <= 100


def test_generate_command_writes_checks_and_removes(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path)
    out = runner.invoke(app, ["deploy", "generate", "--dir", d, "--service", "settlement"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "cloudbuild" / "settlement.yaml").is_file()
    check = ["deploy", "generate", "--dir", d, "--check", "--service", "settlement"]
    assert runner.invoke(app, check).exit_code == 0
    assert runner.invoke(app, [*check[:-2], "--service", "risk"]).exit_code == 1
    out = runner.invoke(app, ["deploy", "generate", "--dir", d, "--service", "risk"])
    assert not (tmp_path / "cloudbuild" / "settlement.yaml").exists()  # no longer listed
    assert runner.invoke(app, ["deploy", "generate", "--service", "nope"]).exit_code == 2


def test_terraform_declares_every_generated_variable() -> None:
    import hcl2

    declared: dict[str, str] = {}
    for block in hcl2.loads((REPO_ROOT / "deploy/terraform/variables.tf").read_text())["variable"]:
        for name, body in block.items():
            declared[name.strip('"')] = str(body["type"])
    generated = json.loads((REPO_ROOT / "deploy/terraform" / TFVARS_NAME).read_text())
    assert set(generated) <= set(declared)
    # the object types name every field the generator writes
    for field in ("db_slug", "publishes", "consumes"):
        assert field in declared["services"]
    for field in ("service", "max_delivery_attempts", "push_path"):
        assert field in declared["topics"]
