"""Render audit findings: a rich table for people, JSON and SARIF 2.1.0 for machines."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from fusion_prime.ops.audit.engine import AuditResult
from fusion_prime.ops.audit.model import RULES, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
}
_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
}


def to_json(result: AuditResult) -> str:
    return json.dumps(
        {
            "root": str(result.root),
            "files": result.files,
            "deploy_targets": result.targets,
            "findings": [f.as_dict() for f in result.findings],
        },
        indent=2,
    )


def to_sarif(result: AuditResult) -> str:
    rules = [
        {
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "help": {"text": rule.fix},
            "defaultConfiguration": {"level": _SARIF_LEVEL[rule.severity]},
            "properties": {"severity": rule.severity.label},
        }
        for rule in RULES.values()
    ]
    index = {rule_id: i for i, rule_id in enumerate(RULES)}
    results: list[dict[str, Any]] = [
        {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.path, "uriBaseId": "SRCROOT"},
                        "region": {"startLine": max(f.line, 1)},
                    }
                }
            ],
        }
        for f in result.findings
    ]
    sarif = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "fusion-prime audit",
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": result.root.as_uri() + "/"}},
                "results": results,
            }
        ],
    }
    return json.dumps(sarif, indent=2)


def print_table(result: AuditResult, console: Console) -> None:
    if not result.findings:
        console.print(
            f"[green]no findings[/green] in {result.files} files "
            f"({result.targets} deploy targets, {result.seconds:.2f} s)"
        )
        return
    table = Table(title=f"fusion-prime audit: {len(result.findings)} findings", show_lines=True)
    for col in ("rule", "severity", "location", "problem", "fix"):
        table.add_column(col, overflow="fold")
    for f in result.findings:
        table.add_row(
            f.rule,
            f"[{_STYLE[f.severity]}]{f.severity.label}[/]",
            f"{f.path}:{f.line}",
            f.message,
            f.fix,
        )
    console.print(table)
    console.print(f"{result.files} files, {result.targets} deploy targets, {result.seconds:.2f} s")
