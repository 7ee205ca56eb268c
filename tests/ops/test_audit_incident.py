"""The incident report's configurations: every listed problem flagged before, none after.

Fixtures: tests/ops/fixtures/incident_before and incident_after, written from the report's
"Deployment Configuration Errors", "Root Cause Analysis" and "The Fix" sections.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fusion_prime.cli import app
from fusion_prime.ops.audit.engine import run_audit
from tests.harness import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures"
S = "services"

# (rule, file) for each problem the report lists
REPORT_PROBLEMS = {
    # Settlement: "Missing DATABASE_URL / --set-secrets / --add-cloudsql-instances"
    ("FP101", f"{S}/settlement/cloudbuild.yaml"),
    ("FP103", f"{S}/settlement/cloudbuild.yaml"),
    # dependencies.py:15 os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./settlement.db")
    ("FP201", f"{S}/settlement/app/dependencies.py"),
    # the subscription the settlement service consumes, created without a dead letter
    ("FP601", f"{S}/settlement/scripts/setup_pubsub.sh"),
    # Compliance: "--allow-unauthenticated", "NO ENVIRONMENT VARIABLES AT ALL!"
    ("FP101", f"{S}/compliance/cloudbuild.yaml"),
    ("FP103", f"{S}/compliance/cloudbuild.yaml"),
    ("FP501", f"{S}/compliance/cloudbuild.yaml"),
    ("FP201", f"{S}/compliance/app/dependencies.py"),
    # ... and its routes answer anyone (the fix adds an app-wide API key dependency)
    ("FP502", f"{S}/compliance/app/main.py"),
    # Risk: os.getenv("DATABASE_URL", "") and MockRiskCalculator
    ("FP101", f"{S}/risk-engine/cloudbuild.yaml"),
    ("FP103", f"{S}/risk-engine/cloudbuild.yaml"),
    ("FP201", f"{S}/risk-engine/app/dependencies.py"),
    ("FP202", f"{S}/risk-engine/app/dependencies.py"),
    # Alert: "--allow-unauthenticated", no env vars, running without persistence
    ("FP101", f"{S}/alert-notification/cloudbuild.yaml"),
    ("FP103", f"{S}/alert-notification/cloudbuild.yaml"),
    ("FP501", f"{S}/alert-notification/cloudbuild.yaml"),
    ("FP202", f"{S}/alert-notification/app/store.py"),
    # Price oracle: env vars incl. ETH_RPC_URL, no database URL, caching only
    ("FP101", f"{S}/price-oracle/cloudbuild.yaml"),
    ("FP103", f"{S}/price-oracle/cloudbuild.yaml"),
    ("FP301", f"{S}/price-oracle/cloudbuild.yaml"),
    ("FP202", f"{S}/price-oracle/app/cache.py"),
}


def test_before_every_reported_problem_is_flagged() -> None:
    result = run_audit(FIXTURES / "incident_before")
    found = {(f.rule, f.path) for f in result.findings}
    assert found == REPORT_PROBLEMS
    settlement_default = next(
        f for f in result.findings if f.path == f"{S}/settlement/app/dependencies.py"
    )
    assert settlement_default.line == 7
    assert "sqlite+aiosqlite:///./settlement.db" in settlement_default.message
    rpc = next(f for f in result.findings if f.rule == "FP301")
    assert "ETH_RPC_URL" in rpc.message


def test_after_the_fix_is_clean() -> None:
    result = run_audit(FIXTURES / "incident_after")
    assert result.findings == []
    assert result.targets == 5


def test_the_repository_itself_is_clean() -> None:
    result = run_audit(REPO_ROOT)
    assert [f"{f.rule} {f.path}:{f.line} {f.message}" for f in result.findings] == []
    assert result.files > 20


def test_cli_formats_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    before = str(FIXTURES / "incident_before")

    out = runner.invoke(app, ["audit", before, "--format", "json"])
    assert out.exit_code == 1
    data = json.loads(out.stdout)
    assert {(f["rule"], f["path"]) for f in data["findings"]} == REPORT_PROBLEMS
    first = data["findings"][0]
    assert first["severity"] == "critical"
    assert first["fix"]

    sarif_path = tmp_path / "audit.sarif"
    out = runner.invoke(app, ["audit", before, "--format", "sarif", "-o", str(sarif_path)])
    assert out.exit_code == 1
    sarif = json.loads(sarif_path.read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(run["results"]) == len(REPORT_PROBLEMS)
    for result in run["results"]:
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1

    # only the FP601 finding is medium: --fail-on high still fails, a clean tree passes
    assert runner.invoke(app, ["audit", before, "--fail-on", "critical"]).exit_code == 1
    only_pubsub = str(FIXTURES / "incident_before" / S / "settlement" / "scripts")
    assert runner.invoke(app, ["audit", only_pubsub, "--fail-on", "high"]).exit_code == 0
    assert runner.invoke(app, ["audit", only_pubsub, "--fail-on", "medium"]).exit_code == 1
    table = runner.invoke(app, ["audit", str(FIXTURES / "incident_after")])
    assert table.exit_code == 0
    assert "no findings" in table.stdout
    assert runner.invoke(app, ["audit", before, "--fail-on", "severe"]).exit_code == 2
    excluded = runner.invoke(app, ["audit", before, "--exclude", "services"])
    assert excluded.exit_code == 0
