"""`fusion-prime serve console`: the console process (no database, ever)."""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError

DEFAULT_PORT = 8100


def refusal() -> str | None:
    """Why the console must not start, or None. It reads services only over HTTP: a
    DATABASE_URL in its environment is a wiring mistake, refused rather than ignored."""
    if os.environ.get("DATABASE_URL"):
        return (
            "DATABASE_URL is set, but the console has no database: it reads every service "
            "through its HTTP API (CONSOLE_*_URL). Unset DATABASE_URL for this process."
        )
    return None


def run_console(*, host: str, port: int | None) -> None:
    import uvicorn

    from fusion_prime.console.app import create_app
    from fusion_prime.console.settings import ConsoleSettings
    from fusion_prime.platform.observability import configure_logging

    reason = refusal()
    if reason is None:
        try:
            settings = ConsoleSettings()
        except ValidationError as exc:
            reason = "invalid settings: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
    if reason is not None:
        sys.stderr.write(f"fusion-prime console: refusing to start: {reason}\n")
        raise SystemExit(2)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port or DEFAULT_PORT,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
