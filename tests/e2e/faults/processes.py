"""The stack under test as processes: services, nats-server clusters, their metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import nats
import nats.errors
import nats.js.errors

from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess, Stack, free_port
from tests.e2e.faults.harness import until

# --- running the stack -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path,
    nats_url: str,
    *,
    workers: int,
    orchestrators: int = 1,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """The orchestrator(s), `workers` workers and the archiver as processes (started from
    a worker thread: `Stack.start` runs its own event loop to provision)."""
    stack = Stack(
        data_dir=tmp_path / "stack",
        workers=workers,
        orchestrators=orchestrators,
        nats_url=nats_url,
        env=env,
        ready_timeout_s=60,
    )
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop, grace_s=20)


async def add_service(
    stack: Stack, role: str, agent_id: str, *, env: Mapping[str, str]
) -> ServiceProcess:
    """One more `role` process beside the stack's, stopped with them: their environment
    with `env` on top (e.g. its own `AGENTBUS_NATS__URL`)."""
    port = free_port()
    proc = ServiceProcess(
        role=role,
        agent_id=agent_id,
        http_port=port,
        log_path=stack.data_dir / "logs" / f"{agent_id}.log",
        # the stack's services differ only in these two from one another
        env={
            **stack.processes[0].env,
            "AGENTBUS_AGENT_ID": agent_id,
            "AGENTBUS_HTTP__PORT": str(port),
            **env,
        },
    )
    proc.start()
    stack.processes.append(proc)
    await asyncio.to_thread(stack.wait_ready, [proc])
    return proc


def archive_url(stack: Stack) -> str:
    return f"sqlite+aiosqlite:///{stack.data_dir / 'archive.db'}"


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample of a service's /metrics (None when absent or unreachable)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_in_flight(victim: ServiceProcess, *, at_least: int) -> None:
    """Give `victim` up to 5 s to hold `at_least` tasks in flight (best effort: the fault
    is injected either way, and the scenario's counts hold whatever it held)."""

    async def busy() -> bool:
        n = await asyncio.to_thread(
            metric, victim.url, "agentbus_worker_in_flight", consumer="summarize-workers"
        )
        return bool(n and n >= at_least)

    with contextlib.suppress(AssertionError):
        await until(busy, timeout_s=5, what="victim has work in flight")


# --- a 3-node cluster ------------------------------------------------------------------


class NatsCluster:
    """Three nats-server processes on loopback, routed to each other, JetStream on each."""

    NAME = "agentbus-faults"

    def __init__(self, base: Path, *, size: int = 3) -> None:
        self.cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[EmbeddedNatsServer] = []
        for i in range(size):
            name = f"n{i + 1}"
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.cluster_ports) if j != i
            )
            conf = base / f"{name}.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"cluster {{\n"
                f'  name: "{self.NAME}"\n'
                f"  listen: 127.0.0.1:{self.cluster_ports[i]}\n"
                f"  routes: [{routes}]\n"
                f"}}\n"
            )
            self.nodes.append(
                EmbeddedNatsServer(store_dir=base / name, config_file=conf, server_name=name)
            )

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes if n.running)

    def node(self, name: str) -> EmbeddedNatsServer:
        return next(n for n in self.nodes if n.server_name == name)

    async def wait_jetstream(self, *, timeout_s: float = 30.0) -> None:
        """Until the cluster's JetStream answers (a meta leader is elected)."""
        nc = await nats.connect(self.url.split(","), connect_timeout=2, max_reconnect_attempts=-1)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    resp = await nc.request("$JS.API.INFO", b"", timeout=2)
                    info = json.loads(resp.data)
                    if "error" not in info:
                        return
                except (nats.errors.Error, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("JetStream cluster not ready")
                await asyncio.sleep(0.25)
        finally:
            await nc.close()
