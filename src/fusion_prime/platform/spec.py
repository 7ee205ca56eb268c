"""What a service declares so the platform can run, migrate, launch and test it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from fusion_prime.platform.settings import BaseServiceSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from fusion_prime.platform.bus.consumer import Consumer
    from fusion_prime.platform.runtime import BackgroundTask, Runtime


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name, database, migrations, HTTP routers and background work.

    `db_slug` is the name used in deploy resources (fp-<slug>-db, the secret
    fp-<slug>-db-connection-string), which for some services differs from `name`.
    """

    name: str
    db_slug: str
    default_port: int
    migrations_dir: Path
    routers: Callable[[], Sequence[APIRouter]] = lambda: ()
    settings_cls: type[BaseServiceSettings] = BaseServiceSettings
    background: Callable[[Runtime], Sequence[BackgroundTask]] = lambda runtime: ()
    description: str = ""
    # topics this service publishes through its outbox (see platform/bus/registry.py)
    publishes: tuple[str, ...] = ()
    # env names of secrets the service refuses to start without, besides DATABASE_URL:
    # `fusion-prime up` generates them once per local data directory; deployments must
    # provide them (Secret Manager). Never a default value in code.
    required_secrets: tuple[str, ...] = ()
    # env names of secrets the service uses when given (provider credentials): deploys
    # wire them from Secret Manager like the required ones; `fusion-prime up` leaves them
    # unset (the service then says what is not configured instead of refusing to start)
    optional_secrets: tuple[str, ...] = ()
    # extra consumers beside the registry's (test-only topics); production uses the registry
    consumes: tuple[Consumer, ...] = ()
    # extra sections of /health/ready read on the readiness check's connection, e.g.
    # settlement's relayer lag: {"relayer": [...]}; informative, not a readiness condition
    readiness: Callable[[AsyncConnection], Awaitable[dict[str, Any]]] | None = None

    @property
    def database_name(self) -> str:
        """Name of the service's database on the embedded local server."""
        return f"fp_{self.name}"
