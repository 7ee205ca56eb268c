"""Headless Chromium for the console tests: Debian's package, driven by Playwright.

`tools/browser/install.sh` installs it (apt-get) on first use. Only where it cannot be
installed (no apt-get, no root) are the browser tests skipped, saying why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = REPO_ROOT / "tools" / "browser" / "install.sh"


def ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
    if done.returncode == 2 or not CHROMIUM.exists():
        pytest.skip(
            "no browser for the console tests: tools/browser/install.sh could not install "
            f"Debian's chromium here ({done.stderr.strip()[-300:]})"
        )
    if done.returncode != 0:
        pytest.fail(f"installing chromium failed: {done.stderr[-2000:]}")
    return CHROMIUM


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(path), args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()
