"""The processes of `fusion-prime up`, forked from the launcher after it imported the code once.

Each service, dev-local and the console used to be its own `python -m fusion_prime.cli`:
seven interpreters importing FastAPI, SQLAlchemy, pydantic, alembic and the service code
(about 2.5 s of CPU each) at the same moment, on a machine with two cores. Now the
launcher imports all of it once (`fusion_prime.ops.preload`, most of which it needs
itself) and forks every child from that state: a child only runs its own start-up
(settings, database checks, migrations, the app). Children still get exactly the
environment the launcher gives them (the inherited one is replaced, so no DATABASE_URL
leaks into the console), a session of their own and their log file as stdout and
stderr; the same `fusion-prime` command line runs in them. The launcher forks only while
it runs a single thread (no event loop, no pool), so a child inherits no lock held by
another thread.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Protocol


def preload() -> None:
    """Import what the children run (before the first fork)."""
    import fusion_prime.ops.preload  # noqa: F401


def _ctx() -> multiprocessing.context.ForkContext:
    return multiprocessing.get_context("fork")


def _child_main(args: list[str], env: dict[str, str], log_path: str) -> None:
    """In the forked child: a session of its own, no descriptor of the launcher's but
    the log as stdout/stderr, the given environment only, then the `fusion-prime`
    command line."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # nothing of the launcher's (its other children's pipes, files, sockets) stays open
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    os.environ.clear()
    os.environ.update(env)
    from fusion_prime.cli import app

    sys.argv = ["fusion-prime", *args]
    app(args=args, prog_name="fusion-prime")  # exits through SystemExit with its code


class ChildProcess(Protocol):
    """What the launcher uses of a child: subprocess.Popen's names."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class ForkedProcess:
    """The subset of subprocess.Popen the launcher uses, over a forked child."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        pid = self._process.pid
        assert pid is not None
        return pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return None if self._process.is_alive() else self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.is_alive():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(["fusion-prime", "(forked)"], timeout or 0.0)
        return code


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> ChildProcess:
    """Fork `fusion-prime ARGS` with exactly `env`, writing to `log_path`. Where forking
    a process that has imported native libraries is not safe (macOS: system frameworks;
    Windows: no fork), a new interpreter runs the same command line instead."""
    if sys.platform != "linux":
        with open(log_path, "ab") as log_fh:
            return subprocess.Popen(
                [sys.executable, "-m", "fusion_prime.cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    if threading.active_count() != 1:
        raise RuntimeError("fork with other threads running: a child could inherit their locks")
    process = _ctx().Process(
        target=_child_main, args=(list(args), dict(env), str(log_path)), daemon=False
    )
    process.start()
    return ForkedProcess(process)
