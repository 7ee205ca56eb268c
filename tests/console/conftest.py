"""One real local system (`fusion-prime up`) for the console tests, with the demo run on it.

Started once per test session when a console test needs it (starting the stack is the
expensive part), in a throw-away data directory, and stopped (Ctrl-C) afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fusion_prime.platform.embedded import EmbeddedPostgres
from tests.evm import ensure_tools
from tests.harness import REPO_ROOT, local_system_env
from tests.ops.test_launcher import _up


@dataclass
class LocalSystem:
    data_dir: Path
    process: subprocess.Popen[str]
    output: list[str]
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def console(self) -> str:
        return self.urls["console"]

    @property
    def admin_key(self) -> str | None:
        path = self.data_dir / "admin.key"
        return path.read_text().strip() if path.exists() else None

    def db(self, service: str) -> str:
        return EmbeddedPostgres(self.data_dir).url(f"fp_{service}")

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def cli(system: LocalSystem, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", *args],
        cwd=REPO_ROOT,
        env=local_system_env(system.data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def local_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    ensure_tools()  # anvil: `up` starts the local chain the demo's escrows go on
    data_dir = tmp_path_factory.mktemp("console") / "fp"
    proc, lines = _up(data_dir)
    system = LocalSystem(data_dir, proc, lines)
    try:
        if not any(line.startswith("ready in") for line in lines):
            pytest.fail("fusion-prime up did not get ready:\n" + "".join(lines))
        system.urls = json.loads((data_dir / "local-urls.json").read_text())
        yield system
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class DemoRun:
    returncode: int
    output: str


@pytest.fixture(scope="session")
def demo(local_system: LocalSystem) -> DemoRun:
    """`fusion-prime demo` once on the session's local system."""
    done = cli(local_system, "demo")
    return DemoRun(done.returncode, done.stdout + done.stderr)
