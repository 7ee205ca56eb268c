"""A service process with its wall clock moved: Debian's libfaketime, preloaded.

`tools/faketime/install.sh` installs it (apt-get) on first use. Only where it cannot be
installed (no apt-get, no root) are the clock-skew cases skipped, saying why. The
monotonic clock is left real (FAKETIME_DONT_FAKE_MONOTONIC): what is skewed is what a
misconfigured NTP would skew, the time of day.
"""

from __future__ import annotations

import functools
import subprocess
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.harness import REPO_ROOT

INSTALL = REPO_ROOT / "tools" / "faketime" / "install.sh"


@functools.cache
def _library() -> tuple[str | None, str]:
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return lines[-1], ""
    return None, f"rc {done.returncode}: {done.stderr.strip()[-300:]}"


def libfaketime() -> str:
    path, why = _library()
    if path is None:
        if "needs root" in why or "apt-get not found" in why:
            pytest.skip(
                "no libfaketime for the clock-skew cases: tools/faketime/install.sh could "
                f"not install it here ({why})"
            )
        pytest.fail(f"installing libfaketime failed: {why}")
    return path


def skewed_env(seconds: int) -> dict[str, str]:
    """Environment that starts a process with its clock `seconds` off (e.g. +300)."""
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


async def process_clock_offset(base_url: str) -> float:
    """How far the process's clock is from ours, read from its HTTP `Date` header
    (uvicorn stamps it with the process's time of day); whole seconds."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{base_url}/health/live")
    return parsedate_to_datetime(r.headers["date"]).timestamp() - time.time()
