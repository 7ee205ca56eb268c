"""The test harness: real PostgreSQL databases per test, real service processes.

Databases: TEST_DATABASE_URL when set (PostgreSQL only, anything else is refused),
otherwise an embedded server under .fusion-prime/test-pg. Each service's migrations run
once into a template database named after a hash of the migration files; every test
gets a fresh clone of it (CREATE DATABASE ... TEMPLATE), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from fusion_prime.platform import auth
from fusion_prime.platform.admin import asyncpg_dsn, quote_ident
from fusion_prime.platform.bus.postgres import MIGRATIONS_DIR as BUS_MIGRATIONS_DIR
from fusion_prime.platform.database import DatabaseConfigError, normalise_database_url
from fusion_prime.platform.embedded import EmbeddedPostgres, free_port
from fusion_prime.platform.migrations import upgrade_url

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = REPO_ROOT / ".fusion-prime" / "test-pg"
# Settings that make a throw-away test server faster; never used by `fusion-prime up`.
TEST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


# Every app and process the harness starts gets these unless the test says otherwise: its
# receiving endpoints are local servers on 127.0.0.1 (http), so the explicit development
# allowance of platform/targets.py is on (never with FP_ENV=production, which refuses it;
# the SSRF tests turn it off), and per-key rate limits (429) are out of the way
# (tests/platform/test_limits.py sets its own).
SUITE_ENV = {
    "FP_OUTBOUND_ALLOW_PRIVATE": "true",
    "FP_RATE_LIMIT_PER_SECOND": "100000",
    "FP_RATE_LIMIT_BURST": "100000",
}


def _with_suite_env(env: dict[str, str]) -> dict[str, str]:
    out = {**SUITE_ENV, **env}
    if out.get("FP_ENV") == "production" and "FP_OUTBOUND_ALLOW_PRIVATE" not in env:
        out.pop("FP_OUTBOUND_ALLOW_PRIVATE")
    return out


class HarnessConfigError(Exception):
    pass


def validate_test_url(raw: str) -> str:
    """TEST_DATABASE_URL must be PostgreSQL; the harness refuses everything else."""
    try:
        normalise_database_url(raw, service="tests")
    except DatabaseConfigError as exc:
        raise HarnessConfigError(
            f"TEST_DATABASE_URL refused: {exc}. Tests run against PostgreSQL only."
        ) from exc
    return make_url(raw).set(drivername="postgresql").render_as_string(hide_password=False)


def admin_url_from_env() -> tuple[str, EmbeddedPostgres | None]:
    raw = os.environ.get("TEST_DATABASE_URL")
    if raw:
        return validate_test_url(raw), None
    server = EmbeddedPostgres(
        Path(os.environ.get("FP_TEST_DATA_DIR", TEST_DATA_DIR)), settings=TEST_SERVER_SETTINGS
    )
    return server.start(), server


def migrations_hash(migrations_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(migrations_dir.rglob("*.py")):
        digest.update(path.relative_to(migrations_dir).as_posix().encode())
        digest.update(path.read_bytes())
    # platform schema helpers shape every service's first migration
    import fusion_prime.platform.bus.schema as bus_schema
    import fusion_prime.platform.schema as schema

    digest.update(Path(schema.__file__).read_bytes())
    digest.update(Path(bus_schema.__file__).read_bytes())
    return digest.hexdigest()[:12]


# Bus databases made for service processes (below); the session's factory drops them.
BUS_DATABASES_MADE: list[str] = []


def _service_needs_bus(service: str) -> bool:
    from fusion_prime.platform.bus.wiring import consumers_for
    from fusion_prime.services import load_spec

    try:
        spec = load_spec(service)
    except KeyError:
        return False
    return bool(spec.publishes or consumers_for(spec))


def create_bus_database_sync(database_url: str) -> str:
    """A fresh migrated bus database on the server of `database_url` (from sync code).

    Runs in a helper thread with its own event loop so it also works while the test's
    loop is running.
    """
    import concurrent.futures

    admin = make_url(database_url).set(drivername="postgresql", database="postgres")
    factory = DatabaseFactory(admin.render_as_string(hide_password=False))

    async def _make() -> str:
        return await factory.create("bus", BUS_MIGRATIONS_DIR)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        url: str = pool.submit(asyncio.run, _make()).result(timeout=120)
    BUS_DATABASES_MADE.append(url)
    return url


@dataclass
class DatabaseFactory:
    """Creates migrated databases from per-service templates on one server."""

    admin_url: str
    _templates: dict[str, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _conn: asyncpg.Connection | None = None
    _conn_loop: asyncio.AbstractEventLoop | None = None
    _version: int = 0

    def url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(asyncpg_dsn(self.admin_url))

    async def _shared(self) -> asyncpg.Connection:
        """One admin connection per event loop: connecting costs more than cloning."""
        loop = asyncio.get_running_loop()
        if self._conn is None or self._conn_loop is not loop or self._conn.is_closed():
            self._conn = await self._admin()
            self._conn_loop = loop
            self._version = int(await self._conn.fetchval("SHOW server_version_num"))
        return self._conn

    async def template(self, name: str, migrations_dir: Path) -> str:
        key = f"{name}:{migrations_dir}"
        async with self._lock:
            if key in self._templates:
                return self._templates[key]
            tpl = f"fp_tpl_{name}_{migrations_hash(migrations_dir)}"
            conn = await self._admin()
            try:
                # several test runs may share a server (TEST_DATABASE_URL): serialise
                await conn.execute("SELECT pg_advisory_lock(hashtext($1))", tpl)
                ready = await conn.fetchval(
                    "SELECT datistemplate FROM pg_database WHERE datname = $1", tpl
                )
                if not ready:
                    await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(tpl)}")
                    await conn.execute(f"CREATE DATABASE {quote_ident(tpl)}")
                    await upgrade_url(
                        normalise_database_url(self.url(tpl), service="tests"), migrations_dir
                    )
                    await conn.execute(
                        f"ALTER DATABASE {quote_ident(tpl)} WITH IS_TEMPLATE true "
                        "ALLOW_CONNECTIONS false"
                    )
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", tpl)
            finally:
                await conn.close()
            self._templates[key] = tpl
            return tpl

    async def create(self, name: str, migrations_dir: Path | None) -> str:
        """A new database for `name`, migrated (cloned from the template) when dirs given."""
        db = f"fp_t_{name}_{uuid.uuid4().hex[:10]}"
        tpl = await self.template(name, migrations_dir) if migrations_dir else None
        conn = await self._shared()
        if tpl is None:
            await conn.execute(f"CREATE DATABASE {quote_ident(db)}")
        else:
            strategy = " STRATEGY FILE_COPY" if self._version >= 150000 else ""
            await conn.execute(
                f"CREATE DATABASE {quote_ident(db)} TEMPLATE {quote_ident(tpl)}{strategy}"
            )
        return self.url(db)

    async def drop(self, url: str) -> None:
        db = make_url(url).database
        assert db is not None
        assert db.startswith("fp_t_")
        conn = await self._shared()
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(db)} WITH (FORCE)")


# -- direct database reads (the "database validation utilities") -------------------


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def count_rows(url: str, table: str, where: str = "TRUE", *args: Any) -> int:
    return int(await fetchval(url, f"SELECT count(*) FROM {table} WHERE {where}", *args))


# -- API keys (platform/auth.py) ----------------------------------------------------

# Throw-away keys get a cheap scrypt cost (stored in the hash, verified by the same code);
# real keys (`fusion-prime auth create-key`, `fusion-prime up`) use the default cost.
TEST_SCRYPT_N = 2**10


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def add_key(
    database_url: str,
    role: auth.Role = "admin",
    *,
    name: str | None = None,
    expires_at: Any = None,
) -> str:
    """A new key of `role` in a service database; returns the key (`fpk_...`)."""
    key = auth.new_key(n=TEST_SCRYPT_N)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO api_keys (key_id, name, role, secret_hash, expires_at, created_by) "
            "VALUES ($1, $2, $3, $4, $5, 'tests')",
            key.key_id,
            name or f"test {role}",
            role,
            key.secret_hash,
            expires_at,
        )
    finally:
        await conn.close()
    return key.token


async def has_api_keys(database_url: str) -> bool:
    return bool(await fetchval(database_url, "SELECT to_regclass('api_keys') IS NOT NULL"))


def has_api_keys_sync(database_url: str) -> bool:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        found: bool = pool.submit(asyncio.run, has_api_keys(database_url)).result(60)
    return found


def add_key_sync(database_url: str, role: auth.Role = "admin", **kw: Any) -> str:
    """add_key from sync code (also while the test's event loop runs)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        token: str = pool.submit(asyncio.run, add_key(database_url, role, **kw)).result(60)
    return token


# -- real service processes ---------------------------------------------------------


@dataclass
class ServiceProcess:
    """A service started as a real subprocess, to be killed -9 and restarted."""

    args: Sequence[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # the admin key written into the service's database once it is ready (wait_ready);
    # None for a process whose database has no api_keys table (test-only apps)
    api_key: str | None = None
    _key_database: str | None = None
    # the service's name, which its /health/ready names: an answer from another process
    # on the same port is not this one being ready
    service: str | None = None

    @classmethod
    def for_service(
        cls,
        service: str,
        database_url: str | None,
        log_dir: Path,
        *,
        migrate: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        port = free_port()
        args = [sys.executable, "-m", "fusion_prime.cli", "serve", service, "--port", str(port)]
        if migrate:
            args.append("--migrate")
        env = _env(database_url, extra_env)
        # a publishing/consuming service refuses to start without a bus: give it its own
        # fresh bus database unless the test passes FP_BUS_URL (to share one)
        if database_url and "FP_BUS_URL" not in env and _service_needs_bus(service):
            # a server that does not answer (a test of refusals) gets no bus: the process
            # is then refused for that reason or an earlier one
            with contextlib.suppress(OSError, asyncpg.PostgresError, ValueError):
                env["FP_BUS_URL"] = create_bus_database_sync(database_url)
        proc = cls(args, env, port, log_dir / f"{service}-{port}.log")
        proc._key_database = database_url
        proc.service = service
        return proc

    @classmethod
    def for_module(
        cls,
        module: str,
        database_url: str | None,
        log_dir: Path,
        *,
        extra_env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        port = free_port()
        args = [sys.executable, "-m", module, "--port", str(port)]
        env = _env(database_url, extra_env)
        proc = cls(args, env, port, log_dir / f"{module}-{port}.log", _key_database=database_url)
        return proc

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of `api_key` (empty before the process was ready)."""
        return auth_headers(self.api_key) if self.api_key else {}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, **kw)

    def async_client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers=self.headers, **kw)

    def _ensure_key(self) -> None:
        """Once migrated (ready), the database gets the process's admin key, once."""
        if self.api_key is None and self._key_database and has_api_keys_sync(self._key_database):
            self.api_key = add_key_sync(self._key_database, "admin", name="harness admin")

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            self.process = subprocess.Popen(
                list(self.args),
                env=self.env,
                cwd=REPO_ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"process exited with {self.process.returncode}: {self.log_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{self.base_url}/health/ready", timeout=1)
                if r.status_code == 200:
                    if self.service is not None and r.json().get("service") != self.service:
                        raise RuntimeError(
                            f"port {self.port} answers as {r.json().get('service')!r}, not "
                            f"{self.service!r}: {self.log_text()[-3000:]}"
                        )
                    self._ensure_key()
                    return
            time.sleep(0.05)
        raise TimeoutError(f"not ready after {timeout} s: {self.log_text()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def restart(self) -> ServiceProcess:
        self.kill9()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# the suite's database settings: a process under test gets its own, never these
# (TEST_DATABASE_URL is the harness's server, not the system's)
SUITE_DATABASE_VARIABLES = frozenset({"DATABASE_URL", "FP_BUS_URL", "TEST_DATABASE_URL"})


def local_system_env(data_dir: Path) -> dict[str, str]:
    """The environment of `fusion-prime up` and CLI runs on a local system in tests: the
    suite's database settings removed (`up` runs its own embedded server)."""
    env = {k: v for k, v in os.environ.items() if k not in SUITE_DATABASE_VARIABLES}
    env["FP_DATA_DIR"] = str(data_dir)
    return env


def _env(database_url: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SUITE_DATABASE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    env.setdefault("FP_ENV", "test")
    env["FP_DB_CONNECT_TIMEOUT"] = env.get("FP_DB_CONNECT_TIMEOUT", "10")
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra or {})
    return _with_suite_env(env)


@contextlib.contextmanager
def running(proc: ServiceProcess, timeout: float = 30.0) -> Iterator[ServiceProcess]:
    proc.start()
    try:
        proc.wait_ready(timeout)
        yield proc
    finally:
        proc.terminate()


@contextlib.asynccontextmanager
async def asgi_client(
    spec: Any, database_url: str, *, role: auth.Role | None = "admin", **settings_env: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for a service app, its lifespan run for real.

    Authenticated with a new key of `role` (admin by default) made in the service's
    database; `role=None` gives a client without credentials. The key is `client.api_key`.
    """
    from fusion_prime.platform.app import create_app

    settings = spec.settings_cls(
        DATABASE_URL=database_url, **_with_suite_env({"FP_ENV": "test", **settings_env})
    )
    url = normalise_database_url(database_url, service=spec.name)
    app = create_app(spec, settings, url)
    # a database without an api_keys table (a test-only app's) gets no key
    token = await add_key(database_url, role) if role and await has_api_keys(database_url) else None
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = auth_headers(token) if token else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            client.api_key = token  # type: ignore[attr-defined]
            # what state changes made through this client record as their actor
            client.actor = (  # type: ignore[attr-defined]
                auth.Identity(token.split("_")[1], f"test {role}", role).actor
                if token and role
                else None
            )
            yield client


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port, serving `handler`; yields its base
    URL and shuts it down afterwards (the local stand-in for a receiving endpoint)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
