"""The request/reply path: `rpc.{skill}` on core NATS, queue group `{skill}-workers`.

At-most-once and low latency: a request goes to one worker of the queue group, the
reply comes straight back to the requester's inbox; nothing is stored, nothing is
retried by the bus. Use it for short texts that want an answer now; use `submit` for
documents that must never be lost.

Server side, `SkillEndpoint` runs inside every `TaskWorker`: the worker's skill decides
what a request means (it receives the request as a one-task job), the endpoint only
decodes, bounds concurrency, replies and counts. It is also the worker's nats.micro
registration (`agentbus-worker`), so `$SRV` discovery lists it with live stats.

The client side is `agentbus.client.rpc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import nats.errors
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig

from agentbus.bus.connect import flush_barrier
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError, MessageDecodeError
from agentbus.contract.messages import SummarizeReply, SummarizeRequest, TaskAssign, decode, encode
from agentbus.contract.subjects import WORKER_SERVICE
from agentbus.contract.workers import WorkerStats, micro_version
from agentbus.observability import metrics, telemetry

if TYPE_CHECKING:
    from agentbus.bus.core import Bus
    from agentbus.runtime.worker import Skill

__all__ = ["RPC_JOB_ID", "SkillEndpoint"]

log = logging.getLogger("agentbus.rpc")

RPC_JOB_ID: Final = "rpc"
"""The job id of the one-task job a request becomes inside the worker."""


class SkillEndpoint:
    """Serves `rpc.{skill}` for one worker and registers it as a nats.micro service."""

    def __init__(
        self,
        bus: Bus,
        skill: Skill,
        *,
        version: str,
        concurrency: int,
        max_message_bytes: int,
        state: Callable[[], str],
        tasks_in_flight: Callable[[], int],
        task_counts: Mapping[str, int],
    ) -> None:
        self.bus = bus
        self.skill = skill
        self.subject = subjects.rpc_subject(skill.name)
        self.queue = subjects.rpc_queue(skill.name)
        self.version = version
        self.concurrency = concurrency
        self.max_message_bytes = max_message_bytes
        self._state = state
        self._tasks_in_flight = tasks_in_flight
        self._task_counts = task_counts
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._service: Service | None = None
        self._serving = False
        self._toggle: asyncio.Task[None] | None = None
        self.ok = 0
        self.failed = 0
        self._seconds_total = 0.0
        labels = (bus.service, skill.name)
        self._m_ok = metrics.RPC_REQUESTS.labels(*labels, "ok")
        self._m_error = metrics.RPC_REQUESTS.labels(*labels, "error")
        self._m_rejected = metrics.RPC_REQUESTS.labels(*labels, "rejected")
        self._m_seconds = metrics.RPC_SECONDS.labels(*labels)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def stats(self) -> WorkerStats:
        served = self.ok + self.failed
        tasks = self._task_counts
        tasks_in_flight = self._tasks_in_flight()
        return WorkerStats(
            agent_id=self.bus.agent_id,
            skill=self.skill.name,
            backend=self.skill.backend,
            state=self._state(),
            concurrency=self.concurrency,
            in_flight=tasks_in_flight + self.in_flight,
            tasks_in_flight=tasks_in_flight,
            rpc_in_flight=self.in_flight,
            tasks_ok=tasks.get("ok", 0),
            tasks_retried=tasks.get("retried", 0),
            tasks_dead_lettered=tasks.get("dead_lettered", 0),
            tasks_rejected=tasks.get("rejected", 0),
            rpc_ok=self.ok,
            rpc_failed=self.failed,
            rpc_mean_ms=round(self._seconds_total / served * 1000, 3) if served else 0.0,
        )

    def _stats_data(self, _endpoint: EndpointStats) -> object:
        return self.stats().model_dump(mode="json")

    async def start(self) -> None:
        """Register with nats.micro and start serving `rpc.{skill}`."""
        try:
            self._service = await add_service(
                self.bus.nc,
                ServiceConfig(
                    name=WORKER_SERVICE,
                    version=micro_version(self.version),
                    description=f"agentbus worker of skill {self.skill.name}",
                    metadata={
                        "agent_id": self.bus.agent_id,
                        "skill": self.skill.name,
                        "backend": self.skill.backend,
                        "concurrency": str(self.concurrency),
                    },
                    stats_handler=self._stats_data,
                ),
            )
            await self._service.add_endpoint(
                EndpointConfig(
                    name=self.skill.name,
                    subject=self.subject,
                    queue_group=self.queue,
                    handler=self._on_request,
                    metadata={
                        "request": SummarizeRequest.MSG_TYPE,
                        "reply": SummarizeReply.MSG_TYPE,
                    },
                )
            )
            # the server knows the subscription before anyone is told the worker is up
            await flush_barrier(self.bus.nc)
        except (nats.errors.Error, ValueError) as e:
            raise AgentBusError(f"cannot serve {self.subject} ({WORKER_SERVICE}): {e}") from e
        self._serving = True
        log.info("serving %s in queue group %s", self.subject, self.queue)

    # nats.micro has no public way to pause one endpoint; a paused worker must leave the
    # queue group (so requests go to the other replicas) yet stay discoverable. The
    # endpoints' subscriptions are toggled through nats.micro's own start/stop methods.
    async def _set_serving(self, on: bool) -> None:
        if self._service is None or on == self._serving:
            return
        for endpoint in list(getattr(self._service, "_endpoints", [])):
            subscribed = getattr(endpoint, "_subscription", None) is not None
            if on and not subscribed:
                await endpoint._start()
            elif not on and subscribed:
                await endpoint._stop()
        self._serving = on
        await flush_barrier(self.bus.nc)
        log.info("%s %s", "serving" if on else "stopped serving", self.subject)

    def _schedule(self, on: bool) -> None:
        previous = self._toggle

        async def toggle() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await self._set_serving(on)
            except (nats.errors.Error, AssertionError) as e:
                log.warning("could not %s %s: %s", "resume" if on else "pause", self.subject, e)

        self._toggle = asyncio.create_task(toggle())

    def pause(self) -> None:
        """Leave the queue group (requests go to other replicas); stay discoverable."""
        self._schedule(False)

    def resume(self) -> None:
        self._schedule(True)

    async def settled(self) -> None:
        """Return once the last `pause` or `resume` has taken effect on the server."""
        if self._toggle is not None:
            with contextlib.suppress(Exception):
                await self._toggle

    @property
    def serving(self) -> bool:
        return self._serving

    async def stop(self, *, grace_s: float) -> bool:
        """Stop taking requests, deregister, finish in-flight ones; True if all finished."""
        if self._toggle is not None:
            with contextlib.suppress(Exception):
                await self._toggle
        if self._service is not None:
            if not self._serving:  # paused: nats.micro would stop the stopped endpoint again
                endpoints = getattr(self._service, "_endpoints", None)
                if isinstance(endpoints, list):
                    endpoints[:] = [e for e in endpoints if getattr(e, "_subscription", None)]
            try:
                await self._service.stop()
            except Exception as e:  # the connection may be closing already
                log.debug("nats.micro stop of %s: %s", WORKER_SERVICE, e)
            self._service = None
        self._serving = False
        if not self._inflight:
            return True
        _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
        return not pending

    async def _on_request(self, request: Request) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(request))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _serve(self, request: Request) -> None:
        started = time.perf_counter()
        sender = self.bus.agent_id
        try:
            env = decode(request.data, SummarizeRequest, max_bytes=self.max_message_bytes)
        except MessageDecodeError as e:
            self._m_rejected.inc()
            self.failed += 1
            await self._respond(
                request,
                SummarizeReply(
                    ok=False, error=f"bad request on {self.subject}: {e}", worker_id=sender
                ),
            )
            return
        req = env.payload
        task = TaskAssign(
            job_id=RPC_JOB_ID,
            task_id=env.id,
            level=0,
            index=0,
            count=1,
            text=req.text,
            max_chars=req.max_chars,
        )
        with telemetry.span(
            f"rpc {self.skill.name}",
            headers=request.headers or {},
            kind="server",
            attributes={"agentbus.rpc.subject": self.subject, "agentbus.request_id": env.id},
        ):
            try:
                out = await self.skill.run(task)
            except Exception as e:
                reason = str(e) if isinstance(e, AgentBusError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, AgentBusError):
                    log.exception("skill %s crashed on %s", self.skill.name, self.subject)
                reply = SummarizeReply(ok=False, error=reason[:2000], worker_id=sender)
                self._m_error.inc()
                self.failed += 1
            else:
                if out.usage is not None:
                    tokens = metrics.SUMMARIZER_TOKENS
                    tokens.labels(self.bus.service, self.skill.backend, "prompt").inc(
                        out.usage.prompt_tokens
                    )
                    tokens.labels(self.bus.service, self.skill.backend, "completion").inc(
                        out.usage.completion_tokens
                    )
                reply = SummarizeReply(ok=True, summary=out.text, worker_id=sender)
                self._m_ok.inc()
                self.ok += 1
        elapsed = time.perf_counter() - started
        self._seconds_total += elapsed
        self._m_seconds.observe(elapsed)
        await self._respond(request, reply)

    async def _respond(self, request: Request, reply: SummarizeReply) -> None:
        try:
            await request.respond(encode(reply, sender=self.bus.agent_id))
        except Exception as e:  # the requester is gone or the connection dropped
            log.debug("reply on %s not sent: %s", self.subject, e)


# --- client side ------------------------------------------------------------------------
