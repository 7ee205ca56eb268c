"""`fusion-prime auth create-key|import-key|list-keys|revoke-key`: API keys in the service
databases.

Where the keys go (each service keeps its own `api_keys` table, docs/auth.md):
- with DATABASE_URL set (production: a one-off job with the service's own connection
  secret, like `fusion-prime migrate`), the one service named by `--service`;
- without it (local), every service database on the embedded server of the data
  directory (`--data-dir`, $FP_DATA_DIR, ./.fusion-prime), or those named by `--service`:
  one key then works on every local service, like the admin key of `fusion-prime up`.

One key for several deployed services: `create-key` (or `generate-key`, no database) once,
then `import-key` into each other service's database, one job per DATABASE_URL, the key
read from a file or stdin (never the command line, which `ps` and shell history show).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from fusion_prime.platform import auth
from fusion_prime.platform.database import (
    DatabaseConfigError,
    engine_scope,
    normalise_database_url,
    redact_url,
)

app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke (docs/auth.md).")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

ServiceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        "-s",
        help="service database(s) to use; required (one) with DATABASE_URL, default all locally",
    ),
]
NameOpt = Annotated[str, typer.Option(help="who or what uses the key (recorded as the actor)")]
RoleOpt = Annotated[str, typer.Option(help=f"one of {', '.join(auth.ROLES)}")]
ExpiresOpt = Annotated[str | None, typer.Option(help="expiry: 30d, 12h, 45m or an ISO date/time")]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="local data directory (default $FP_DATA_DIR or ./.fusion-prime)")
]


class TargetError(Exception):
    pass


class KeyConflict(TargetError):
    """The key id is in that database already as something else than the key imported."""


def targets(
    services: list[str] | None, data_dir: Path | None
) -> tuple[dict[str, str], Callable[[], None]]:
    """service -> database URL to write, and a function that leaves the local server as it
    was found (stopped again when this command started it)."""
    from fusion_prime.services import load_spec, service_names

    names = services or service_names()
    for name in names:
        try:
            load_spec(name)
        except KeyError as exc:
            raise TargetError(str(exc.args[0])) from None
    raw = os.environ.get("DATABASE_URL")
    if raw:
        if not services or len(services) != 1:
            raise TargetError(
                "DATABASE_URL is set: name the one service it belongs to with --service "
                "(each service keeps its keys in its own database)"
            )
        return {services[0]: raw}, lambda: None
    from fusion_prime.platform.embedded import EmbeddedPostgres, data_dir_from_env

    directory = (data_dir or data_dir_from_env()).resolve()
    server = EmbeddedPostgres(directory)
    if not server.initialised():
        raise TargetError(
            f"no local system in {directory}: run `fusion-prime up` first, or set DATABASE_URL "
            "and --service to write into a deployed service's database"
        )
    was_running = server.running()
    server.start()
    urls = {name: server.url(load_spec(name).database_name) for name in names}
    return urls, (lambda: None) if was_running else server.stop


async def _each(
    urls: dict[str, str], work: Callable[[AsyncConnection], Awaitable[T]]
) -> dict[str, T]:
    results: dict[str, T] = {}
    for service, raw in urls.items():
        try:
            url = normalise_database_url(raw, service=service)
        except DatabaseConfigError as exc:
            raise TargetError(str(exc)) from None
        try:
            async with engine_scope(url, pool_size=1, app_name="fusion-prime-auth") as engine:
                async with engine.begin() as conn:
                    results[service] = await work(conn)
        except (DBAPIError, OSError) as exc:
            first = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
            raise TargetError(
                f"{service} ({redact_url(url)}): {first}; is the database migrated "
                f"(`fusion-prime migrate {service}` or `fusion-prime up`)?"
            ) from None
    return results


def provision(
    urls: dict[str, str],
    key: auth.NewKey,
    *,
    name: str,
    role: auth.Role,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> dict[str, bool]:
    """Write one key into each database; service -> True where it was new."""

    async def _insert(conn: AsyncConnection) -> bool:
        return await auth.insert_key(
            conn, key, name=name, role=role, expires_at=expires_at, created_by=created_by
        )

    return asyncio.run(_each(urls, _insert))


_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_expiry(value: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `45m`, or an ISO date/time (UTC when no zone); must be in the future."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(value.strip())
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        when = now + timedelta(**{unit: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise typer.BadParameter("give 30d, 12h, 45m or an ISO date/time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when <= now:
        raise typer.BadParameter(f"{when.isoformat()} is not in the future")
    return when


def _checked(name: str, role: str, expires: str | None) -> tuple[auth.Role, datetime | None]:
    """--name and --role checked: the role, and the expiry time of --expires, if given."""
    if role not in auth.ROLES:
        raise typer.BadParameter(
            f"role must be one of {', '.join(auth.ROLES)}", param_hint="--role"
        )
    if not 1 <= len(name) <= 200:
        raise typer.BadParameter("1 to 200 characters", param_hint="--name")
    return role, parse_expiry(expires) if expires else None


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TargetError as exc:
        err.print(f"fusion-prime auth: {exc}", markup=False)
        raise typer.Exit(2) from None


@app.command("create-key")
def create_key(
    name: NameOpt,
    role: RoleOpt,
    expires: ExpiresOpt = None,
    service: ServiceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key; it is printed once here and never stored (only its scrypt hash)."""
    checked_role, expires_at = _checked(name, role, expires)
    key = auth.new_key()

    def _go() -> dict[str, bool]:
        urls, done = targets(service, data_dir)
        try:
            return provision(
                urls,
                key,
                name=name,
                role=checked_role,
                expires_at=expires_at,
                created_by=f"cli:{os.environ.get('USER', 'unknown')}",
            )
        finally:
            done()

    written = _run(_go)
    table = Table(title="API key created")
    for col in ("key id", "name", "role", "expires", "services"):
        table.add_column(col)
    table.add_row(
        key.key_id,
        name,
        role,
        expires_at.isoformat(timespec="seconds") if expires_at else "never",
        ", ".join(written),
    )
    out.print(table)
    out.print("the key (shown once, keep it secret):", markup=False)
    out.print(key.token, markup=False, soft_wrap=True)


KeyFileOpt = Annotated[
    str,
    typer.Option(
        "--key-file",
        help="file holding the key (e.g. a mounted secret); `-` (default): read it from stdin",
    ),
]


def read_token(source: str) -> str:
    """The one key in a file or on stdin (surrounding whitespace ignored)."""
    try:
        raw = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {source}: {exc.strerror}") from None
    token = raw.strip()
    if auth.parse_token(token) is None:
        where = "stdin" if source == "-" else source
        raise typer.BadParameter(f"{where} holds no API key (fpk_<key id>_<secret>)")
    return token


async def _import_into(
    conn: AsyncConnection, key: auth.NewKey, secret: str, *, name: str, role: auth.Role,
    expires_at: datetime | None, created_by: str,
) -> str:  # fmt: skip
    """`imported`, or `present` when this very key is there already with this role;
    KeyConflict when the key id is there as another key, revoked, or with another role."""
    record = await auth.load_key(conn, key.key_id)
    if record is None:
        await auth.insert_key(
            conn, key, name=name, role=role, expires_at=expires_at, created_by=created_by
        )
        return "imported"
    if not auth.verify_secret(secret, record.secret_hash):
        raise KeyConflict(f"key id {key.key_id} is there as another key: not imported")
    if record.revoked_at is not None:
        raise KeyConflict(f"key {key.key_id} is there, revoked: not imported again")
    if record.role != role:
        raise KeyConflict(
            f"key {key.key_id} is there with role {record.role}, not {role}: revoke it "
            "there first to give it another role"
        )
    return "present"


@app.command("import-key")
def import_key(
    name: NameOpt,
    role: RoleOpt,
    key_file: KeyFileOpt = "-",
    expires: ExpiresOpt = None,
    service: ServiceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Store an existing key (from another service's `create-key`) in this service's
    database: the same key then works on both. Only its scrypt hash is kept (a new salt);
    the key is read from --key-file or stdin and never printed."""
    checked_role, expires_at = _checked(name, role, expires)
    token = read_token(key_file)
    key = auth.key_from_token(token)
    secret = token.split("_", 2)[2]
    by = f"cli:{os.environ.get('USER', 'unknown')}"

    async def _import(conn: AsyncConnection) -> str:
        return await _import_into(
            conn, key, secret, name=name, role=checked_role, expires_at=expires_at, created_by=by
        )

    def _go() -> dict[str, str]:
        urls, done = targets(service, data_dir)
        outcomes: dict[str, str] = {}
        try:
            for target, url in urls.items():
                try:
                    outcomes |= asyncio.run(_each({target: url}, _import))
                except KeyConflict as exc:
                    raise KeyConflict(f"{target}: {exc}") from None
            return outcomes
        finally:
            done()

    for svc, outcome in _run(_go).items():
        what = "already there" if outcome == "present" else "imported"
        out.print(f"key {key.key_id} ({role}) {what} in {svc}", markup=False)


@app.command("generate-key")
def generate_key() -> None:
    """Print a new key on stdout and store it nowhere: to pipe into a secret store
    (`| gcloud secrets versions add SECRET --data-file=-`) and then `import-key` into each
    service database."""
    sys.stdout.write(auth.new_key().token + "\n")


@app.command("list-keys")
def list_keys(service: ServiceOpt = None, data_dir: DataDirOpt = None) -> None:
    """Keys by lookup id with their state and where they are (never a secret or hash)."""

    def _go() -> dict[str, list[auth.KeyRecord]]:
        urls, done = targets(service, data_dir)
        try:
            return asyncio.run(_each(urls, auth.list_keys))
        finally:
            done()

    found = _run(_go)
    merged: dict[str, tuple[auth.KeyRecord, list[str]]] = {}
    for svc, records in found.items():
        for r in records:
            merged.setdefault(r.key_id, (r, []))[1].append(svc)
    now = datetime.now(UTC)
    table = Table(title="API keys")
    for col in ("key id", "name", "role", "created", "expires", "state", "services"):
        table.add_column(col)
    for record, services in sorted(merged.values(), key=lambda x: x[0].created_at):
        if record.revoked_at is not None:
            state = f"revoked {record.revoked_at.isoformat(timespec='seconds')}"
        elif record.expires_at is not None and record.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        table.add_row(
            record.key_id,
            record.name,
            record.role,
            record.created_at.isoformat(timespec="seconds"),
            record.expires_at.isoformat(timespec="seconds") if record.expires_at else "never",
            state,
            ", ".join(services),
        )
    out.print(table)
    if not merged:
        out.print("no keys")


@app.command("revoke-key")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="the key id (lookup id) from list-keys")],
    service: ServiceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key everywhere it is; running services refuse it within FP_AUTH_CACHE_SECONDS."""
    if not auth.KEY_ID_RE.match(key_id):
        parsed = auth.parse_token(key_id)
        if parsed is None:
            raise typer.BadParameter("a key id is 12 hex digits", param_hint="KEY_ID")
        key_id = parsed[0]  # a whole key was pasted: use its lookup id only

    def _go() -> dict[str, bool]:
        urls, done = targets(service, data_dir)
        try:
            return asyncio.run(_each(urls, lambda conn: auth.revoke_key(conn, key_id)))
        finally:
            done()

    revoked = _run(_go)
    hit = [s for s, ok in revoked.items() if ok]
    if not hit:
        err.print(f"no active key {key_id} in {', '.join(revoked)}", markup=False)
        raise typer.Exit(1)
    out.print(f"key {key_id} revoked in {', '.join(hit)}", markup=False)
