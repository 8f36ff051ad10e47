"""The whole stack as local processes: an embedded nats-server (unless a URL is given),
provisioning, then the orchestrator, N workers, the archiver and (with `gateway=True`, as
`agentbus up` does unless --no-gateway) the gateway, each its own process with its own
agent id and HTTP port. Used by `agentbus up`, `agentbus demo` and the tests.

The gateway's API keys: `AGENTBUS_GATEWAY__API_KEYS_FILE` if set, else a file in the data
directory with one `operate` key of the default tenant, made once (`gateway_key`).

Stop order is the safe one: workers and orchestrator first (they finish in-flight work),
then the archiver (after it has archived what they emitted), then the nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from agentbus.bus.connect import connect_nats
from agentbus.bus.topology import provision
from agentbus.contract.errors import StackError
from agentbus.contract.settings import GatewaySettings, NatsSettings, load_settings
from agentbus.dev.embedded import EmbeddedNatsServer, die_with_parent

__all__ = ["STATE_FILE", "ProcessState", "ServiceProcess", "Stack", "StackError", "free_port"]

STATE_FILE: Final = "stack.json"
GATEWAY_KEYS_FILE: Final = "gateway-keys.json"
TENANTS_ENV: Final = "AGENTBUS_TENANTS__CONFIGURED"
_TAKEN_PORT_RE: Final = re.compile(
    r"bind on address \('[^']*', (\d+)\): address already in use", re.IGNORECASE
)
"""How asyncio (aiohttp) says a port was taken, in a child's output."""
_PORT_TRIES: Final = 3
"""Starts of one child on another free port when the last one's port was taken first."""


class ProcessState(enum.StrEnum):
    """A child's state as `stack.json` shows it (`agentbus up` supervises the changes)."""

    STARTING = "starting"  # started, not ready yet
    RUNNING = "running"  # has been ready since it started
    RESTARTING = "restarting"  # crashed, waiting out its backoff delay
    STOPPED = "stopped"  # exited 0 (drained): stays stopped
    FAILED = "failed"  # crashed too often: given up on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_or_free_port() -> int:
    """The gateway's default port when nothing listens there, else a free one."""
    default = GatewaySettings().port
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", default))
        except OSError:
            return free_port()
    return default


@dataclass
class ServiceProcess:
    role: str
    agent_id: str
    http_port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    state: ProcessState = ProcessState.STARTING
    started_at_s: float = 0.0  # time.monotonic() of the last start
    restarts: int = 0
    exit_code: int | None = None  # of the last exit, if it has exited
    port_tries: int = 0  # starts on another port at start-up (its port was taken first)
    log_offset: int = 0  # where its last start's output begins in `log_path`

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.log_offset = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentbus", self.role, *self.extra_args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        log.close()
        self.started_at_s = time.monotonic()
        self.state = ProcessState.STARTING

    def last_output(self, *, max_chars: int = 2000) -> str:
        """The end of what its last start wrote to its log ("" without a log)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while running."""
        return self.proc.poll() if self.proc is not None else None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, timeout_s: float, signalled: bool = False) -> int | None:
        """SIGTERM (unless already `signalled`), wait, SIGKILL after `timeout_s`."""
        if not signalled:
            self.signal(signal.SIGTERM)
        code = self.wait(timeout_s)
        if code is None and self.proc is not None:
            self.proc.kill()
            code = self.proc.wait(5)
        return code


class Stack:
    def __init__(
        self,
        *,
        data_dir: Path,
        workers: int = 2,
        orchestrators: int = 1,
        nats_url: str | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 30.0,
        gateway: bool = False,
        gateway_port: int | None = None,
    ) -> None:
        """`gateway_port`: None is the default port (8080) when it is free, else any."""
        self.data_dir = data_dir.resolve()
        self.workers = workers
        self.orchestrators = orchestrators
        self.external_url = nats_url
        self.extra_env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.server: EmbeddedNatsServer | None = None
        self.processes: list[ServiceProcess] = []
        self.nats_url = nats_url or ""
        self._worker_seq = 0
        self.gateway = gateway
        self.gateway_port = gateway_port
        self._gateway_port_given = gateway_port is not None
        self.gateway_key: str | None = None
        """The operate key the stack made (None when the keys file came from the env)."""

    # --- life ------------------------------------------------------------------------

    def _env(self, agent_id: str, http_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault(
            "AGENTBUS_ARCHIVER__DATABASE_URL",
            f"sqlite+aiosqlite:///{self.data_dir / 'archive.db'}",
        )
        env.setdefault("AGENTBUS_LOG_FORMAT", "json")
        env.update(
            {
                "AGENTBUS_NATS__URL": self.nats_url,
                "AGENTBUS_AGENT_ID": agent_id,
                "AGENTBUS_HTTP__PORT": str(http_port),
                "AGENTBUS_HTTP__HOST": "127.0.0.1",
            }
        )
        env.update(self.extra_env)
        return env

    def _process(self, role: str, agent_id: str) -> ServiceProcess:
        port = free_port()
        return ServiceProcess(
            role=role,
            agent_id=agent_id,
            http_port=port,
            log_path=self.data_dir / "logs" / f"{agent_id}.log",
            env=self._env(agent_id, port),
        )

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.external_url is None:
            self.server = EmbeddedNatsServer(
                store_dir=self.data_dir / "jetstream", with_parent=True
            ).start()
            self.nats_url = self.server.url
        try:
            asyncio.run(self._provision())
            self.processes = [self._process("archiver", "archiver-1")]
            for i in range(1, self.orchestrators + 1):
                self.processes.append(self._process("orchestrator", f"orchestrator-{i}"))
            for _ in range(self.workers):
                self.processes.append(self._new_worker())
            if self.gateway:
                self.processes.append(self._gateway_process())
            for p in self.processes:
                p.start()
            self.wait_ready(self.processes)
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _gateway_process(self) -> ServiceProcess:
        p = self._process("gateway", "gateway-1")
        port = self.gateway_port if self.gateway_port is not None else _default_or_free_port()
        p.env["AGENTBUS_GATEWAY__HOST"] = "127.0.0.1"
        p.env["AGENTBUS_GATEWAY__PORT"] = str(port)
        self.gateway_port = port
        if "AGENTBUS_GATEWAY__API_KEYS_FILE" not in p.env:
            p.env["AGENTBUS_GATEWAY__API_KEYS_FILE"] = str(self._gateway_keys())
        return p

    def _gateway_keys(self) -> Path:
        """The stack's own keys file: one operate key of the default tenant, kept across
        runs (owner-only permissions)."""
        path = self.data_dir / GATEWAY_KEYS_FILE
        try:
            self.gateway_key = json.loads(path.read_text())["keys"][0]["key"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            self.gateway_key = secrets.token_urlsafe(24)
            doc = {"keys": [{"key": self.gateway_key, "tenant": "default", "role": "operate",
                             "name": "agentbus-up"}]}  # fmt: skip
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
        return path

    @property
    def gateway_url(self) -> str | None:
        if not self.gateway or self.gateway_port is None:
            return None
        return f"http://127.0.0.1:{self.gateway_port}"

    def _new_worker(self) -> ServiceProcess:
        self._worker_seq += 1
        return self._process("worker", f"worker-{self._worker_seq}")

    def add_worker(self) -> ServiceProcess:
        p = self._new_worker()
        p.start()
        self.processes.append(p)
        self.wait_ready([p])
        self.write_state()
        return p

    async def _provision(self) -> None:
        # the services' tenants (given in `env`) have their own consumers to create
        overrides: dict[str, object] = {}
        tenants = self.extra_env.get(TENANTS_ENV)
        if tenants:
            try:
                overrides["tenants"] = {"configured": json.loads(tenants)}
            except ValueError as e:
                raise StackError(f"{TENANTS_ENV}: not JSON: {e}") from e
        settings = load_settings(nats=NatsSettings(url=self.nats_url), **overrides)
        nc = await connect_nats(settings.nats, name="agentbus-up", service="provision")
        try:
            await provision(nc.jetstream(), settings)
        finally:
            await nc.close()

    def wait_ready(self, processes: list[ServiceProcess]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(processes)
        while pending:
            for p in list(pending):
                if not p.alive():
                    tail = p.last_output()
                    if p.port_tries < _PORT_TRIES and self.move_taken_port(p, tail):
                        p.port_tries += 1
                        p.start()
                        continue
                    raise StackError(f"{p.agent_id} exited at start-up:\n{tail}")
                if p.ready():
                    p.state = ProcessState.RUNNING
                    pending.remove(p)
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.agent_id for p in pending)
                raise StackError(f"not ready within {self.ready_timeout_s}s: {names}")
            if pending:
                time.sleep(0.1)

    def move_taken_port(self, p: ServiceProcess, output: str) -> bool:
        """Give `p` another free port for the one its `output` says was taken (True), so
        that its next start can bind. The stack picks free ports and the children bind
        them a moment later: another process (a second stack, a test) can be faster.
        False when its output names no taken port, or one the user chose (the gateway's
        `--gateway-port`), or one that is not its own: those are errors to report."""
        found = _TAKEN_PORT_RE.findall(output)
        if not found:
            return False
        taken = int(found[-1])
        if taken == p.http_port:
            p.http_port = free_port()
            p.env["AGENTBUS_HTTP__PORT"] = str(p.http_port)
            return True
        if p.role == "gateway" and taken == self.gateway_port and not self._gateway_port_given:
            self.gateway_port = free_port()
            p.env["AGENTBUS_GATEWAY__PORT"] = str(self.gateway_port)
            return True
        return False

    def write_state(self) -> None:
        """Write `stack.json` (atomically: readers poll it). Every service keeps its entry;
        `pid` is its latest process, `state` a `ProcessState`."""
        state = {
            "nats_url": self.nats_url,
            "gateway_url": self.gateway_url,
            "pid": os.getpid(),
            "services": [
                {
                    "agent_id": p.agent_id,
                    "role": p.role,
                    "pid": p.pid,
                    "http": p.url,
                    "state": str(p.state),
                    "restarts": p.restarts,
                    "exit_code": p.exit_code,
                }
                for p in self.processes
            ],
        }
        path = self.data_dir / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    def by_role(self, role: str) -> list[ServiceProcess]:
        return [p for p in self.processes if p.role == role]

    def stop(self, *, grace_s: float = 30.0) -> dict[str, int | None]:
        """Stop everything; returns each process's exit code."""
        codes: dict[str, int | None] = {}
        first = [p for p in self.processes if p.role not in ("archiver", "gateway")]
        # the gateway first of all: no new job comes in while the rest stops
        for p in self.by_role("gateway"):
            codes[p.agent_id] = p.stop(timeout_s=grace_s)
        for p in first:
            p.signal(signal.SIGTERM)
        for p in first:
            codes[p.agent_id] = p.stop(timeout_s=grace_s, signalled=True)
        for p in self.by_role("archiver"):
            codes[p.agent_id] = p.stop(timeout_s=grace_s)
        if self.server is not None:
            self.server.stop()
            self.server = None
        with contextlib.suppress(OSError):
            (self.data_dir / STATE_FILE).unlink()
        return codes

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
