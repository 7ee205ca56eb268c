"""The generated deploy files: current in the repository, and right for the services."""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fusion_prime.cli import app
from fusion_prime.console.settings import ConsoleSettings
from fusion_prime.ops.audit.engine import run_audit
from fusion_prime.ops.deploy_gen import (
    CONSOLE,
    KNOWN_DB_SLUGS,
    PUSH_PATH,
    TFVARS_NAME,
    delivery_attempts,
    known_services,
    shipped_services,
    stale_files,
    write_files,
)
from fusion_prime.platform.bus.registry import TOPICS
from fusion_prime.platform.settings import BaseServiceSettings
from fusion_prime.services import all_specs
from tests.harness import REPO_ROOT


def test_committed_deploy_files_are_up_to_date() -> None:
    stale = stale_files(REPO_ROOT / "deploy", shipped_services())
    assert stale == [], "run `.venv/bin/fusion-prime deploy generate` and commit"


def test_write_files_rewrites_what_is_stale_and_removes_leftovers(tmp_path: Path) -> None:
    services = known_services(["settlement", "risk"])
    assert write_files(tmp_path, services) == [
        "cloudbuild/settlement.yaml",
        "cloudbuild/risk.yaml",
        "cloudbuild/console.yaml",
        f"terraform/{TFVARS_NAME}",
    ]
    assert stale_files(tmp_path, services) == []
    assert write_files(tmp_path, services) == []  # nothing stale, nothing written
    (tmp_path / "cloudbuild" / "risk.yaml").write_text("edited by hand\n")
    (tmp_path / "cloudbuild" / "gone.yaml").write_text("steps: []\n")
    assert stale_files(tmp_path, services) == ["cloudbuild/risk.yaml", "cloudbuild/gone.yaml"]
    assert write_files(tmp_path, services) == [
        "cloudbuild/risk.yaml",
        "cloudbuild/gone.yaml (removed)",
    ]
    assert not (tmp_path / "cloudbuild" / "gone.yaml").exists()
    assert stale_files(tmp_path, services) == []


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
            given = _flag(args, "--set-secrets")
            assert given["DATABASE_URL"] == f"fp-{slug}-db-connection-string:latest"
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


def _flag(args: list[str], flag: str) -> dict[str, str]:
    """`--flag=A=x,B=y` of a gcloud step as {A: x, B: y} (empty when absent)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) <= 1
    return dict(item.split("=", 1) for item in values[0].split(",")) if values else {}


def test_required_secrets_come_from_their_own_secrets(tmp_path: Path) -> None:
    """Settlement and compliance refuse to start without their webhook secrets: the service
    and its migration job (which validates the whole settings class) get them."""
    specs = {spec.name: spec for spec in all_specs()}
    assert specs["settlement"].required_secrets == ("SETTLEMENT_WEBHOOK_KEY",)
    assert specs["compliance"].required_secrets == ("KYC_WEBHOOK_SECRET",)
    services = known_services(["settlement", "compliance", "risk"])
    write_files(tmp_path, services)
    expected = {
        "settlement": {"SETTLEMENT_WEBHOOK_KEY": "fp-settlement-settlement-webhook-key:latest"},
        "compliance": {"KYC_WEBHOOK_SECRET": "fp-compliance-kyc-webhook-secret:latest"},
        "risk": {},
    }
    tfvars = json.loads((tmp_path / "terraform" / TFVARS_NAME).read_text())
    for svc in services:
        doc = yaml.safe_load((tmp_path / "cloudbuild" / f"{svc.name}.yaml").read_text())
        for step in ("migrate", "deploy"):
            given = _flag(_step(doc, step)["args"], "--set-secrets")
            assert given.pop("DATABASE_URL") == f"fp-{svc.db_slug}-db-connection-string:latest"
            assert given == expected[svc.name]
            env = _flag(_step(doc, step)["args"], "--set-env-vars")
            assert not set(env) & set(specs[svc.name].required_secrets)  # never plain
        assert tfvars["services"][svc.name]["secrets"] == {
            k: v.removesuffix(":latest") for k, v in expected[svc.name].items()
        }


def test_consumers_get_push_authentication_env(tmp_path: Path) -> None:
    services = known_services(["settlement", "compliance", "risk"])
    write_files(tmp_path, services)
    tfvars = json.loads((tmp_path / "terraform" / TFVARS_NAME).read_text())
    for svc in services:
        doc = yaml.safe_load((tmp_path / "cloudbuild" / f"{svc.name}.yaml").read_text())
        env = _flag(_step(doc, "deploy")["args"], "--set-env-vars")
        assert env["FP_ENV"] == "production"
        assert env["FP_BUS"] == "pubsub"
        assert env["GCP_PROJECT"] == "$PROJECT_ID"
        audience = tfvars["services"][svc.name]["push_audience"]
        if svc.name == "compliance":  # consumes nothing
            assert "FP_PUSH_AUDIENCE" not in env
            assert audience is None
            continue
        assert env["FP_PUSH_AUDIENCE"] == audience == svc.push_audience
        assert env["FP_PUSH_SERVICE_ACCOUNT"] == (
            f"fp-{svc.db_slug}-push@$PROJECT_ID.iam.gserviceaccount.com"
        )
    # the path is the push endpoint's route; the settings it checks read these names
    from fusion_prime.platform.bus.pubsub import push_router

    assert [r.path for r in push_router.routes] == [PUSH_PATH]  # type: ignore[attr-defined]
    fields = BaseServiceSettings.model_fields
    assert fields["push_audience"].alias == "FP_PUSH_AUDIENCE"
    assert fields["push_service_account"].alias == "FP_PUSH_SERVICE_ACCOUNT"


def test_delivery_attempts_outside_pubsub_range_are_refused() -> None:
    assert delivery_attempts("s", 5) == 5
    assert delivery_attempts("s", 100) == 100
    for bad in (0, 4, 101):
        with pytest.raises(ValueError, match="outside Pub/Sub"):
            delivery_attempts("s", bad)


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


def test_a_deploy_without_a_required_secret_is_flagged(tmp_path: Path) -> None:
    """The audit joins the generated Cloud Build file with the ServiceSpec's AST."""
    services = known_services(["settlement"])
    write_files(tmp_path / "deploy", services)
    spec = tmp_path / "src" / "pkg" / "settlement" / "spec.py"
    spec.parent.mkdir(parents=True)
    spec.write_text(
        'SPEC = ServiceSpec(name="settlement", db_slug="settlement",\n'
        '                   required_secrets=("SETTLEMENT_WEBHOOK_KEY",))\n'
    )
    assert run_audit(tmp_path).findings == []
    path = tmp_path / "deploy" / "cloudbuild" / "settlement.yaml"
    doc = yaml.safe_load(path.read_text())
    for step in ("migrate", "deploy"):
        args = _step(doc, step)["args"]
        args[:] = [
            "--set-secrets=DATABASE_URL=fp-settlement-db-connection-string:latest"
            if a.startswith("--set-secrets")
            else a
            for a in args
        ]
    path.write_text(yaml.safe_dump(doc))
    findings = run_audit(tmp_path).findings
    assert [(f.rule, "SETTLEMENT_WEBHOOK_KEY" in f.message) for f in findings] == [
        ("FP104", True),
        ("FP104", True),
    ]  # the service and its migration job


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
            assert subs[s.name]["max_delivery_attempts"] == s.max_attempts
            # pushed to the consuming service when it is deployed, else pull
            shipped = s.service in {"risk", "alerts"} and not s.external
            push = f"/events/pubsub/{s.name}" if shipped else None
            assert subs[s.name]["push_path"] == push
            assert subs[s.name]["external"] is s.external


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
    assert (tmp_path / "cloudbuild" / "console.yaml").is_file()  # always beside them
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
    for field in ("db_slug", "publishes", "consumes", "secrets", "push_audience"):
        assert field in declared["services"]
    for field in ("service", "max_delivery_attempts", "push_path", "external"):
        assert field in declared["topics"]


def _resources(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource in deploy/terraform/<name>, via python-hcl2."""
    import hcl2

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for group in hcl2.loads((REPO_ROOT / "deploy/terraform" / name).read_text())["resource"]:
        for rtype, named in group.items():
            for rname, body in named.items():
                out[(rtype.strip('"'), rname.strip('"'))] = body
    return out


def test_terraform_push_subscriptions_and_their_accounts() -> None:
    sub = _resources("pubsub.tf")[("google_pubsub_subscription", "sub")]
    assert sub["enable_message_ordering"] is True
    assert sub["retry_policy"]
    dead = sub["dead_letter_policy"][0]
    assert dead["max_delivery_attempts"] == "${each.value.max_delivery_attempts}"
    push = sub["dynamic"][0]['"push_config"']
    assert "each.value.push_path != null" in push["for_each"]  # not shipped: stays pull
    content = push["content"][0]
    assert content["push_endpoint"].endswith('${push_config.value.push_path}"')
    token = content["oidc_token"][0]
    assert token["service_account_email"] == (
        "${google_service_account.push[push_config.value.service].email}"
    )
    assert token["audience"] == "${var.services[push_config.value.service].push_audience}"

    iam = _resources("iam.tf")
    account = iam[("google_service_account", "push")]
    assert account["account_id"] == '"fp-${each.value.db_slug}-push"'
    creator = iam[("google_service_account_iam_member", "push_token_creator")]
    assert creator["role"] == '"roles/iam.serviceAccountTokenCreator"'
    assert creator["member"] == "${local.pubsub_agent}"
    # the runtime accounts pull nothing: no subscriber role for them
    assert ("google_pubsub_subscription_iam_member", "subscriber") not in iam

    run = _resources("cloudrun.tf")[("google_cloud_run_v2_service", "service")]
    assert "push_audience" in run["custom_audiences"]
    text = (REPO_ROOT / "deploy/terraform/cloudrun.tf").read_text()
    # only the service's own push account may invoke it; its env names that account
    assert "member = google_service_account.push[svc].member }" in text
    assert '"fp-${each.value.db_slug}-push@${var.project_id}.iam.gserviceaccount.com"' in text


def test_terraform_required_secrets_are_generated_and_private() -> None:
    res = _resources("secrets.tf")
    password = res[("random_password", "service")]
    assert password["length"] >= 32  # SETTLEMENT_WEBHOOK_KEY's minimum (16 for KYC)
    access = res[("google_secret_manager_secret_iam_member", "service")]
    assert access["role"] == '"roles/secretmanager.secretAccessor"'
    assert access["member"] == "${google_service_account.run[each.value.service].member}"
    assert res[("google_secret_manager_secret", "service")]["secret_id"] == "${each.key}"
    # a value of that shape is accepted by the services' settings
    from fusion_prime.compliance.settings import ComplianceSettings
    from fusion_prime.settlement.settings import SettlementSettings

    value = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(64))
    assert len(value) == password["length"]
    SettlementSettings.model_validate({"SETTLEMENT_WEBHOOK_KEY": value})
    ComplianceSettings.model_validate({"KYC_WEBHOOK_SECRET": value})


def test_console_is_deployed_without_a_database(tmp_path: Path) -> None:
    """The console's Cloud Build file: no migration job, no DATABASE_URL, no Cloud SQL;
    its keys from Secret Manager, every service's URL and secure cookies as plain settings
    that ConsoleSettings reads and accepts in production."""
    services = shipped_services()
    write_files(tmp_path, services)
    doc = yaml.safe_load((tmp_path / "cloudbuild" / "console.yaml").read_text())
    assert [s["id"] for s in doc["steps"]] == ["build", "push", "deploy", "check", "promote"]
    deploy = _step(doc, "deploy")["args"]
    assert deploy[:3] == ["run", "deploy", "console"]
    assert "--args=serve,console,--host,0.0.0.0,--port,8080" in deploy
    assert not any("cloudsql" in a for a in deploy)
    assert "--no-allow-unauthenticated" in deploy
    assert "--allow-unauthenticated" not in deploy
    assert "--service-account=fp-console-run@$PROJECT_ID.iam.gserviceaccount.com" in deploy
    secrets_given = _flag(deploy, "--set-secrets")
    assert secrets_given == {
        "CONSOLE_SESSION_KEY": "fp-console-console-session-key:latest",
        "CONSOLE_API_KEY": "fp-console-console-api-key:latest",
    }
    env = _flag(deploy, "--set-env-vars")
    assert "DATABASE_URL" not in env
    assert not set(env) & set(secrets_given)
    assert env["FP_ENV"] == "production"
    assert env["CONSOLE_COOKIE_SECURE"] == "true"
    assert env["CONSOLE_SERVERLESS_AUTH"] == "true"  # the services are private on Cloud Run
    for svc in services:
        assert env[f"CONSOLE_{svc.name.upper()}_URL"] == (
            f"https://{svc.name}-$PROJECT_NUMBER.${{_REGION}}.run.app"
        )
    assert _step(doc, "promote")["waitFor"] == ["check"]
    assert '"$$tagged/health/ready"' in _step(doc, "check")["args"][1]

    # every name is a ConsoleSettings field, and the production settings validate
    aliases = {f.alias for f in ConsoleSettings.model_fields.values()}
    assert set(env) | set(secrets_given) <= aliases
    values = {
        k: v.replace("$PROJECT_NUMBER", "1").replace("${_REGION}", "r") for k, v in env.items()
    }
    values.update({name: secrets.token_urlsafe(48) for name in secrets_given})
    settings = ConsoleSettings.model_validate(values)
    assert settings.cookie_secure is True
    assert settings.serverless_auth is True
    assert settings.base_urls()["risk"] == "https://risk-1.r.run.app"

    tfvars = json.loads((tmp_path / "terraform" / TFVARS_NAME).read_text())
    assert tfvars["console"] == {
        "account_id": "fp-console-run",
        "secrets": {"CONSOLE_SESSION_KEY": "fp-console-console-session-key"},
        "provided_secrets": {"CONSOLE_API_KEY": "fp-console-console-api-key"},
        "service_urls": {f"CONSOLE_{s.name.upper()}_URL": s.name for s in services},
    }
    assert "console" not in tfvars["services"]  # no database, no Cloud SQL grant
    assert CONSOLE.secret_for("CONSOLE_API_KEY") == "fp-console-console-api-key"


def test_terraform_console_service_has_no_database() -> None:
    res = _resources("console.tf")
    run = res[("google_cloud_run_v2_service", "console")]
    text = (REPO_ROOT / "deploy/terraform/console.tf").read_text()
    assert "cloud_sql_instance" not in text
    assert "DATABASE_URL" not in text
    assert '"allUsers"' not in text
    assert run["template"][0]["service_account"] == "${google_service_account.console.email}"
    env = {e["name"].strip('"'): e.get("value") for e in run["template"][0]["containers"][0]["env"]}
    assert env["CONSOLE_SERVERLESS_AUTH"] == '"true"'  # the Cloud Build file's setting too
    password = res[("random_password", "console")]
    assert password["length"] >= 32  # ConsoleSettings.session_key's minimum
    # the session key gets a generated version, the viewer key only its secret
    version = res[("google_secret_manager_secret_version", "console")]
    assert version["for_each"] == "${var.console.secrets}"
    access = res[("google_secret_manager_secret_iam_member", "console")]
    assert access["member"] == "${google_service_account.console.member}"
    reads = res[("google_cloud_run_v2_service_iam_member", "console_reads")]
    assert reads["role"] == '"roles/run.invoker"'
