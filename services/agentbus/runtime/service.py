"""The common life of a service process: settings, logging, tracing, the health port,
the NATS connection, control commands, and a clean SIGTERM.

A service subclasses `AgentService` and returns its consumer loops from `setup`. The
runner binds them, serves `/readyz` once NATS is connected and every loop is bound, and
on SIGTERM/SIGINT (or a `drain` command) stops pulling, waits for in-flight work up to
the grace period, drains the connection and exits 0: within the grace period whatever
the connection is doing (never connected yet, connected, reconnecting).

`pause` is acknowledged once it has taken effect: no pull request is open any more, so
no task starts on this replica after the reply (until `resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Final, TypeVar

from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.bus.pull import ANSWER_MARGIN_S
from agentbus.contract import subjects
from agentbus.contract.errors import BusError, MessageDecodeError, TopologyError
from agentbus.contract.messages import Command, CommandReply, EventKind, decode, encode
from agentbus.contract.settings import Settings
from agentbus.contract.version import agentbus_version
from agentbus.observability import metrics, telemetry
from agentbus.observability.health import HealthServer
from agentbus.observability.logs import configure_logging

__all__ = ["AgentService", "agentbus_version", "run_service"]

log = logging.getLogger("agentbus.service")

_START_RETRY_FIRST_S: Final = 1.0
_START_RETRY_MAX_S: Final = 15.0
_CLOSE_SHARE: Final = 0.2
"""Of the grace period, the part kept for the goodbye event and closing the connection
(at most `_CLOSE_MAX_S`); in-flight work gets the rest."""
_CLOSE_MAX_S: Final = 5.0
_TEARDOWN_MAX_S: Final = 5.0

T = TypeVar("T")


class AgentService:
    """Base of the orchestrator, worker and archiver services."""

    name: ClassVar[str] = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loops: list[ConsumerLoop] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.bus: Bus | None = None
        self._set_up = False  # `setup` has returned: until then there are no loops to check
        self.stopped = asyncio.Event()

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        """Prepare resources and return the consumer loops to run."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Release resources after the loops have stopped."""

    def readiness(self) -> tuple[bool, str]:
        if self.bus is None or not self._set_up:
            return False, "starting"
        if not self.bus.connected:
            return False, "NATS not connected"
        unbound = [loop.durable for loop in self.loops if not loop.bound]
        if unbound:
            return False, "consumers not bound: " + ", ".join(unbound)
        return True, "ready"

    @property
    def state(self) -> str:
        if self.stopped.is_set():
            return "draining"
        if self.loops and all(loop.paused for loop in self.loops):
            return "paused"
        return "running"

    def in_flight(self) -> int:
        return sum(loop.in_flight for loop in self.loops)

    def pause(self) -> None:
        for loop in self.loops:
            loop.pause()

    @property
    def pause_timeout_s(self) -> float:
        """Long enough for any open pull request to end (`wait_paused`)."""
        return max((loop.fetch_timeout_s for loop in self.loops), default=0.0) + (
            ANSWER_MARGIN_S + 1.0
        )

    async def wait_paused(self, *, timeout_s: float | None = None) -> bool:
        """After `pause`: True once no new work can start here (no pull request is open),
        False if that did not happen within `timeout_s` (default `pause_timeout_s`)."""
        timeout = self.pause_timeout_s if timeout_s is None else timeout_s
        paused = await asyncio.gather(*(loop.wait_paused(timeout_s=timeout) for loop in self.loops))
        return all(paused)

    def resume(self) -> None:
        for loop in self.loops:
            loop.resume()

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.loops = await self.setup(bus)
        self._set_up = True
        self._tasks = [asyncio.create_task(loop.run()) for loop in self.loops]

    async def stop(self, *, grace_s: float) -> bool:
        """Stop pulling, wait for in-flight work; True when everything finished in time.
        Returns within about `grace_s` (plus a bounded teardown) whatever NATS is doing."""
        deadline = time.monotonic() + grace_s
        self.stopped.set()
        for loop in self.loops:
            loop.stop()
        if self._tasks:  # each loop ends with its open pull request (a rebind may hang)
            _, late = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        left = max(deadline - time.monotonic(), 0.0)
        results = await asyncio.gather(*(loop.wait_idle(timeout_s=left) for loop in self.loops))
        for loop in self.loops:
            await loop.close()
        try:
            await asyncio.wait_for(self.teardown(), _TEARDOWN_MAX_S)
        except TimeoutError:
            log.warning("%s teardown did not finish within %.0fs", self.name, _TEARDOWN_MAX_S)
        return all(results)


async def _serve_commands(bus: Bus, service: AgentService, drain: Callable[[], None]) -> None:
    async def on_command(msg: Msg) -> None:
        try:
            cmd = decode(msg.data, Command, max_bytes=4096).payload.command
        except MessageDecodeError as e:
            reply = CommandReply(
                agent_id=bus.agent_id, service=service.name, ok=False, state=service.state,
                detail=str(e),
            )  # fmt: skip
        else:
            ok, detail = True, f"in_flight={service.in_flight()}"
            if cmd == "pause":
                service.pause()
                # acknowledged once it took effect: no task starts here after the reply
                if not await service.wait_paused():
                    ok, detail = False, "a pull request is still open; try again"
            elif cmd == "resume":
                service.resume()
            elif cmd == "drain":
                drain()
            reply = CommandReply(
                agent_id=bus.agent_id,
                service=service.name,
                ok=ok,
                state="draining" if cmd == "drain" else service.state,
                detail=detail,
            )
        if msg.reply:
            await msg.respond(encode(reply, sender=bus.agent_id))

    await bus.nc.subscribe(subjects.agent_commands(bus.agent_id), cb=on_command)


async def _unless_stopped(
    coro: Coroutine[Any, Any, T], stop: asyncio.Event
) -> asyncio.Future[T] | None:
    """`coro` run until done (returned, its exception raised) or until `stop` is set
    first: then it is cancelled and None is returned."""
    work = asyncio.ensure_future(coro)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if work.done():
        work.result()
        return work
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    return None


async def _start_when_possible(service: AgentService, bus: Bus, stop: asyncio.Event) -> bool:
    """Start the service, waiting (not crashing) while its streams or buckets do not exist
    yet: in Kubernetes the provisioning Job may run after the pods start. False = stopped
    (a start that hangs on an unreachable server is given up)."""
    delay_s = _START_RETRY_FIRST_S
    while True:
        try:
            return await _unless_stopped(service.start(bus), stop) is not None
        except (BusError, TopologyError) as e:
            log.warning("cannot start yet (%s); retrying in %.0fs", e, delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        if stop.is_set():
            return False
        delay_s = min(delay_s * 2, _START_RETRY_MAX_S)


async def _serve_until_stopped(
    service: AgentService,
    bus: Bus,
    stop: asyncio.Event,
    *,
    grace_s: float,
    on_ready: Callable[[AgentService], Awaitable[None]] | None,
) -> float:
    """Start (when the topology is there), serve until `stop`, then stop the service;
    returns the deadline of the grace period, which covers everything from the stop to
    the exit: in-flight work first, then (a bounded share) the goodbye event and closing
    the connection."""
    await _serve_commands(bus, service, stop.set)
    started = await _start_when_possible(service, bus, stop)
    if started:
        with contextlib.suppress(BusError):
            await _unless_stopped(
                bus.emit(EventKind.AGENT_STARTED, data={"service": service.name}), stop
            )
        log.info("%s ready (agent %s)", service.name, bus.agent_id)
        if on_ready is not None:
            await on_ready(service)
        await stop.wait()
    deadline = time.monotonic() + grace_s
    close_s = min(grace_s * _CLOSE_SHARE, _CLOSE_MAX_S)
    log.info("stopping: finishing in-flight work (grace %.0fs)", grace_s)
    if not await service.stop(grace_s=grace_s - close_s):
        log.warning("grace period over with work in flight; it will be redelivered")
    if started and bus.connected:
        with contextlib.suppress(BusError, TimeoutError):
            await asyncio.wait_for(
                bus.emit(EventKind.AGENT_STOPPED, data={"service": service.name}),
                max((deadline - time.monotonic()) / 2, 1.0),
            )
    return deadline


async def run_service(
    factory: Callable[[Settings], AgentService],
    settings: Settings,
    *,
    on_ready: Callable[[AgentService], Awaitable[None]] | None = None,
) -> int:
    """Run one service until SIGTERM/SIGINT or a drain command; returns the exit code."""
    service = factory(settings)
    configure_logging(
        service=service.name, agent_id=settings.agent_id, level=settings.log_level,
        fmt=settings.log_format,
    )  # fmt: skip
    telemetry.setup_tracing(service=service.name, agent_id=settings.agent_id)
    metrics.BUILD_INFO.info({"version": agentbus_version(), "service": service.name})
    health = HealthServer(
        host=settings.http.host, port=settings.http.port, readiness=service.readiness
    )
    await health.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous_term = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("%s %s starting; http port %s", service.name, agentbus_version(), health.bound_port)
    grace_s = settings.worker.grace_period_s
    connecting = Bus.connect(
        settings.nats,
        agent_id=settings.agent_id,
        service=service.name,
        retry_forever=True,
        max_events_per_message=settings.limits.max_events_per_message,
        max_message_bytes=settings.limits.max_message_bytes,
    )
    connected = await _unless_stopped(connecting, stop)  # SIGTERM before NATS answered
    bus = connected.result() if connected is not None else None
    deadline = time.monotonic() + grace_s  # (moved on once stopping begins)
    try:
        if bus is None:
            log.info("stopping before NATS was reachable")
        else:
            deadline = await _serve_until_stopped(
                service, bus, stop, grace_s=grace_s, on_ready=on_ready
            )
    finally:
        if bus is not None:
            await bus.close(timeout_s=max((deadline - time.monotonic()) / 2, 1.0))
        await health.stop()
        telemetry.shutdown_tracing()
    log.info("%s stopped", service.name)
    # Stopped: a second SIGTERM (a supervisor that signals twice) must not kill the process
    # on its way out once the loop has restored the default action. A process that had no
    # SIGTERM handler of its own (the CLI entry point) ignores it from here on.
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(
        signal.SIGTERM, signal.SIG_IGN if previous_term in (signal.SIG_DFL, None) else previous_term
    )
    return 0
