"""`fusion-prime up`: the whole system on the embedded PostgreSQL, one process per service."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from fusion_prime.ops import forked
from fusion_prime.ops.forked import ChildProcess
from fusion_prime.ops.localhelpers import LocalExtras
from fusion_prime.platform import auth
from fusion_prime.platform.admin import ensure_database
from fusion_prime.platform.database import redact_url
from fusion_prime.platform.embedded import EmbeddedPostgres, data_dir_from_env, free_port, port_free
from fusion_prime.platform.spec import ServiceSpec
from fusion_prime.services import all_specs

BUS_DATABASE = "fp_bus"
ADMIN_KEY_FILE = "admin.key"
CONSOLE_KEY_FILE = "console.key"  # the console's own (viewer) key for reading the services
READY_TIMEOUT = 90.0


def _process_age() -> float:
    """Seconds since this process started, so the command line's own imports count too.
    On Linux from /proc (both times since boot, to the clock tick); elsewhere psutil's
    creation time (whose boot time is rounded to the second)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return max(0.0, time.time() - psutil.Process().create_time())


class Phases:
    """Where the start-up time goes: seconds per step, printed after the ready line."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.steps: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.last))
        self.last = now

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.steps)


@dataclass
class Child:
    spec: ServiceSpec
    port: int
    url: str
    process: ChildProcess
    log_path: Path


def _pick_port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def _local_secrets(data_dir: Path, names: set[str]) -> dict[str, str]:
    """Secrets services require, generated once for this local data directory.

    Kept in <data_dir>/local-secrets.json (mode 0600) beside the data they protect, so
    what was encrypted stays readable on the next `up`. Only the local launcher does this;
    a deployed service gets its secrets from the environment or refuses to start.
    """
    path = data_dir / "local-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = sorted(names - stored.keys())
    if missing:
        stored.update({name: secrets.token_urlsafe(48) for name in missing})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    return stored


def _admin_key(data_dir: Path, file: str = ADMIN_KEY_FILE) -> tuple[str, bool]:
    """The local admin key of this data directory: (key, created now).

    Kept in <data_dir>/admin.key (mode 0600) and written into every service database, so
    it works on all of them; delete the file (and revoke the key) to get a new one. The
    console's key is kept the same way in <data_dir>/console.key.
    """
    path = data_dir / file
    if path.exists():
        return path.read_text().strip(), False
    token = auth.new_key().token
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def _wait_ready(children: list[Child]) -> dict[str, str]:
    status: dict[str, str] = {c.spec.name: "starting" for c in children}
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline and "starting" in status.values():
            for child in children:
                if status[child.spec.name] != "starting":
                    continue
                if child.process.poll() is not None:
                    status[child.spec.name] = f"exited ({child.process.returncode})"
                    continue
                try:
                    r = client.get(f"http://127.0.0.1:{child.port}/health/ready")
                    if r.status_code == 200:
                        status[child.spec.name] = "ready"
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
    return {k: ("timeout" if v == "starting" else v) for k, v in status.items()}


def _stop_children(children: list[Child]) -> None:
    for c in children:
        if c.process.poll() is None:
            c.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for c in children:
        try:
            c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.process.kill()
            c.process.wait()


def run_local_stack(*, data_dir: Path | None, host: str = "127.0.0.1") -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # keep URLs whole when the output is a file or pipe
    started = time.monotonic() - _process_age()
    data_dir = (data_dir or data_dir_from_env()).resolve()
    server = EmbeddedPostgres(data_dir)
    fresh = not server.initialised()
    console.print(
        f"[bold]Fusion Prime[/bold]: {'initialising' if fresh else 'starting'} embedded "
        f"PostgreSQL in {data_dir}"
    )
    phases = Phases(started)
    phases.mark("command line")
    # PostgreSQL starts (pg_ctl, initdb on a fresh data dir) while this process imports
    # the code every child runs; the thread is joined before the first fork
    start = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    admin_url_future = start.submit(server.start)
    forked.preload()
    phases.mark("imports")
    admin_url = admin_url_future.result()
    start.shutdown(wait=True)
    phases.mark("postgresql")
    specs = all_specs()

    bus_url = server.url(BUS_DATABASE)
    # services only check the bus schema; it is migrated once here, before any starts
    from fusion_prime.platform.bus.postgres import migrate_bus

    async def _databases() -> None:
        names = [BUS_DATABASE, *(s.database_name for s in specs)]
        await asyncio.gather(*(ensure_database(admin_url, name) for name in names))
        phases.mark("databases")
        await migrate_bus(bus_url)
        phases.mark("bus schema")

    asyncio.run(_databases())
    local = _local_secrets(data_dir, {name for s in specs for name in s.required_secrets})
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    # a local EVM node (anvil, when tools/evm installed it) for settlement's relayer,
    # unless ETH_RPC_URL already names a node
    from fusion_prime.ops.localchain import start_local_chain

    chain = None if os.environ.get("ETH_RPC_URL") else start_local_chain(data_dir)
    phases.mark("chain")
    extras = LocalExtras.choose(host)  # dev-local (SMTP, local prices) and the console
    extras.start_dev_local(data_dir, logs)

    children: list[Child] = []
    for spec in specs:
        port = _pick_port(spec.default_port)
        db_url = server.url(spec.database_name)
        env = {
            **{k: v for k, v in local.items() if k in spec.required_secrets},
            **extras.service_env(spec.name),
            **os.environ,
            "DATABASE_URL": db_url,
            "FP_BUS": "postgres",
            "FP_BUS_URL": bus_url,
            "FP_ENV": os.environ.get("FP_ENV", "development"),
            **(chain.env() if chain is not None and spec.name == "settlement" else {}),
        }
        log_path = logs / f"{spec.name}.log"
        args = ["serve", spec.name, "--host", host, "--port", str(port), "--migrate"]
        proc = forked.spawn(args, env, log_path)
        children.append(Child(spec, port, db_url, proc, log_path))
    # the console needs no service to start (it reads them per request): with the services
    admin_key, admin_created = _admin_key(data_dir)
    console_key = _admin_key(data_dir, CONSOLE_KEY_FILE)[0]
    service_urls = {c.spec.name: f"http://127.0.0.1:{c.port}" for c in children}
    session_key = _local_secrets(data_dir, {"CONSOLE_SESSION_KEY"})["CONSOLE_SESSION_KEY"]
    extras.start_console(service_urls, session_key, console_key, logs)
    phases.mark("spawn")
    stop_requested = False

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    status = _wait_ready(children)
    phases.mark("services ready")
    ready = {c.spec.name: c.url for c in children if status[c.spec.name] == "ready"}
    if ready:  # every service migrated its api_keys table by now
        from fusion_prime.platform.auth_cli import provision

        keys: tuple[tuple[str, str, auth.Role], ...] = (
            (admin_key, "local admin", "admin"),
            (console_key, "console", "viewer"),  # the console reads with its own key
        )
        for key, name, role in keys:
            provision(ready, auth.key_from_token(key), name=name, role=role,
                      created_by="fusion-prime up")  # fmt: skip
    phases.mark("keys")
    status |= extras.wait_ready(READY_TIMEOUT)
    phases.mark("console")
    extras.record(data_dir, service_urls)
    table = Table(title="Fusion Prime (local)")
    for col in ("service", "url", "database", "status", "log"):
        table.add_column(col)
    table.add_row(
        "postgresql (embedded)",
        f"127.0.0.1:{server.port}",
        redact_url(admin_url),
        "ready",
        str(server.log_file),
    )
    table.add_row("event bus", "-", redact_url(bus_url), "ready", "-")
    if chain is not None:
        table.add_row(
            "evm chain (anvil)", chain.url, f"factory {chain.factory}", "ready", str(chain.log_path)
        )
    for c in children:
        table.add_row(
            c.spec.name,
            f"http://{host}:{c.port}",
            redact_url(c.url),
            status[c.spec.name],
            str(c.log_path),
        )
    for h in extras.helpers:
        table.add_row(h.name, f"http://{host}:{h.port}", h.note, status[h.name], str(h.log_path))
    table.add_row(
        "admin key",
        # printed once, when created (below the table, whole); afterwards only where it is
        "printed below, once" if admin_created else "(not shown again)",
        "role admin, every service",
        "created" if admin_created else "kept",
        str(data_dir / ADMIN_KEY_FILE),
    )
    console.print(table)
    if admin_created:
        console.print("admin key (shown once; also in the file above):", markup=False)
        console.print(admin_key, markup=False, soft_wrap=True)
    failed = [n for n, s in status.items() if s != "ready"]
    if failed:
        console.print(f"[red]not ready: {', '.join(failed)}[/red] (see the logs above)")
        extras.stop()
        _stop_children(children)
        if chain is not None:
            chain.stop()
        server.stop()
        return 1
    if not specs:
        console.print("no services are registered in this build yet; only the database runs")
    console.print(
        f"ready in {time.monotonic() - started:.2f} s, data in {data_dir}; press Ctrl-C to stop"
    )
    console.print(f"start-up (s): {phases.line()}", markup=False)
    sys.stdout.flush()
    try:
        while not stop_requested:
            for c in children:
                if c.process.poll() is not None:
                    console.print(
                        f"[red]{c.spec.name} exited with {c.process.returncode}[/red]; "
                        f"see {c.log_path}"
                    )
                    stop_requested = True
            for h in extras.exited():
                console.print(
                    f"[red]{h.name} exited with {h.process.returncode}[/red]; see {h.log_path}"
                )
                stop_requested = True
            time.sleep(0.2)
    finally:
        console.print("stopping services and the embedded PostgreSQL ...")
        extras.stop()
        _stop_children(children)
        if chain is not None:
            chain.stop()
        server.stop()
        console.print("stopped; data kept for the next `fusion-prime up`")
    return 0
