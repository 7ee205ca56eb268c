"""Imported once by the fork server of `fusion-prime up` (ops/forked.py): the modules every
child would otherwise import for itself. Importing only: no settings are read, no
connection is opened, nothing depends on the environment the children get later."""

from __future__ import annotations

import importlib
import importlib.util

_PLATFORM = [
    "fusion_prime.cli",
    "fusion_prime.platform.runner",
    "fusion_prime.platform.app",
    "fusion_prime.platform.migrations",
    "fusion_prime.platform.bus.postgres",
    "fusion_prime.platform.bus.wiring",
    "alembic.command",
    "alembic.runtime.migration",
    "alembic.script",
    "uvicorn.loops.auto",
    "uvicorn.loops.asyncio",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "fusion_prime.console.app",
    "fusion_prime.console.server",
    "fusion_prime.ops.devlocal",
    "aiosmtpd.controller",
]
# the parts of a service its start-up imports lazily (routers, consumers, background work)
_SERVICE_PARTS = ("spec", "settings", "api", "service", "handlers", "live", "poller", "relayer")


def _modules() -> list[str]:
    from fusion_prime.services import service_names

    names = list(_PLATFORM)
    for service in service_names():
        names.extend(f"fusion_prime.{service}.{part}" for part in _SERVICE_PARTS)
    return names


def preload() -> list[str]:
    """Import what exists; the modules imported. A module that fails here is skipped: the
    child that needs it imports it again and reports the error in its own log."""
    done = []
    for name in _modules():
        try:
            if importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except Exception:
            continue
        done.append(name)
    return done


LOADED = preload()
