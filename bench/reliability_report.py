"""`make reliability-report` / `make soak`: run the reliability suite and write one Markdown
table, per case: what was injected, events in, effects out, lost, duplicated, time to
recover; plus the load knees when `python -m bench.load` has been run.

Run: .venv/bin/python -m bench.reliability_report [--soak] [--out PATH]

--soak runs the long sizes (RELIABILITY_SOAK=1): 10,000 chain events, 10,000 price ticks
and 10,000 margin events through a 30 s PostgreSQL outage, a kill -9 per service, a
stopped bus and a full disk, the clock-skew cases, and the 1 million-row sanctions file;
the contract fuzzing then uses RELIABILITY_EXAMPLES (default 100 under --soak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import REPO_ROOT

OUT_DIR = REPO_ROOT / ".fusion-prime" / "reliability"
LOAD = OUT_DIR / "load.json"
COLUMNS = ("case", "injected", "events in", "effects out", "lost", "duplicated", "recover s")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def render(rows: list[dict[str, object]], command: str, pytest_tail: str) -> str:
    lines = [
        "# Fusion Prime reliability report",
        "",
        f"Produced by `{command}` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"pytest: {pytest_tail}",
        "",
        "| " + " | ".join((*COLUMNS, "note")) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for r in rows:
        cells = [
            r["case"],
            r["injected"],
            r["events_in"],
            r["effects_out"],
            r["lost"],
            r["duplicated"],
            r["recover_seconds"],
            r["note"],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if LOAD.exists():
        load = json.loads(LOAD.read_text())
        pg = load["pgbench"]
        lines += [
            "",
            f"## Load (`{load['command']}`, {load['step_seconds']:g} s per rate)",
            "",
            f"pgbench on the same server: TPC-B-like {pg['tpcb']:.0f} tps, "
            f"select-only {pg['select']:.0f} tps.",
            "",
            "| target | knee req/s (p99 <= 250 ms, no errors) |",
            "|---|---|",
        ]
        lines += [f"| {t} | {k} |" for t, k in load["knees"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", action="store_true", help="the long sizes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results = OUT_DIR / ("soak.jsonl" if args.soak else "fast.jsonl")
    results.unlink(missing_ok=True)
    env = {**os.environ, "RELIABILITY_RESULTS": str(results)}
    selection = ["tests/reliability"]
    if args.soak:
        env["RELIABILITY_SOAK"] = "1"
        env.setdefault("RELIABILITY_EXAMPLES", "100")
        selection = ["tests/reliability/test_faults.py", "tests/reliability/test_clock_skew.py"]
        selection += ["tests/reliability/test_hostile_input.py"]
        selection += ["tests/reliability/test_contract_fuzz.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    command = "make soak" if args.soak else "make reliability-report"
    report = render(rows, command, tail)
    out = args.out or OUT_DIR / ("soak-report.md" if args.soak else "report.md")
    out.write_text(report, encoding="utf-8")
    print(report)
    print(f"written to {out}")
    if done.returncode != 0:
        print(done.stdout[-5000:])
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
