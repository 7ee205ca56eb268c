"""A running service's shared state: settings, engine, session factory, background tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fusion_prime.platform.settings import BaseServiceSettings

BackgroundTask = Callable[[], Awaitable[None]]


@dataclass
class Runtime:
    service: str
    settings: BaseServiceSettings
    url: URL
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    state: dict[str, Any] = field(default_factory=dict)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent."""
    runtime = get_runtime(request)
    async with runtime.sessions() as session, session.begin():
        yield session


# scope="function": the commit happens before the response leaves, so a 2xx means stored.
Session = Annotated[AsyncSession, Depends(_session, scope="function")]


async def _runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI runs a sync dependency in its thread pool on every request."""
    return get_runtime(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
