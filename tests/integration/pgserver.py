"""A throw-away PostgreSQL server for tests: `initdb` in a temp dir, `postgres` on a
random 127.0.0.1 port, one database per test, stopped by its pid.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres`
user (created by Debian's package; `.ci/install-postgres.sh` installs it) and the
processes run as that user. Tuned for speed, not durability (fsync off).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["PostgresServer", "find_bindir", "postgres_unavailable"]

SUPERUSER: Final = "agentbus"
_START_TIMEOUT_S: Final = 30.0


def find_bindir() -> Path | None:
    """The directory of `initdb` and `postgres` (Debian's versioned dir, else PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for d in reversed(candidates):
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    return None


def _run_as() -> str | None:
    """The user to run PostgreSQL as: `postgres` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def postgres_unavailable() -> str | None:
    """Why a server cannot be started here, or None."""
    if find_bindir() is None:
        return "PostgreSQL is not installed (run .ci/install-postgres.sh)"
    user = _run_as()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root and there is no {user!r} user to run PostgreSQL as"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed (pip install 'agentbus[postgres]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.bindir = bindir
        self.user = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="agentbus-pg-"))
        self.data = self.base / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _popen_args(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def start(self) -> PostgresServer:
        self._chown(self.base)
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base,
            **self._popen_args(),
        )  # fmt: skip
        for _ in range(3):  # a random port may be taken between the probe and the bind
            self.port = _free_port()
            if self._spawn():
                return self
            self._stop_process()
        tail = (self.base / "postgres.log").read_text(errors="replace")[-2000:]
        self.cleanup()
        raise RuntimeError(f"PostgreSQL did not start:\n{tail}")

    def _spawn(self) -> bool:
        """Start `postgres` on `self.port` over the existing data; True once it is ready."""
        log = (self.base / "postgres.log").open("ab")
        self._chown(self.base / "postgres.log")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.base), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.base,
                start_new_session=True, **self._popen_args(),
            )  # fmt: skip
        finally:
            log.close()
        return self._wait_ready()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut), keeping its data."""
        self._stop_process()

    def restart(self) -> None:
        """Start the stopped server again on the same port, over the same data."""
        if self.proc is not None:
            raise RuntimeError("PostgreSQL is running")
        if not self._spawn():
            tail = (self.base / "postgres.log").read_text(errors="replace")[-2000:]
            self._stop_process()
            raise RuntimeError(f"PostgreSQL did not start again:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", SUPERUSER, "-d", "postgres"],
                check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if ready.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its asyncpg URL."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        subprocess.run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", SUPERUSER, name],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        return self.url(name)

    def url(self, database: str, *, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        self._stop_process()
        shutil.rmtree(self.base, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[PostgresServer]:
        server = cls().start()
        try:
            yield server
        finally:
            server.cleanup()
