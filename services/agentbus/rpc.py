"""The request/reply path: `rpc.{skill}` on core NATS, queue group `{skill}-workers`.

At-most-once and low latency: a request goes to one worker of the queue group, the
reply comes straight back to the requester's inbox; nothing is stored, nothing is
retried by the bus. Use it for short texts that want an answer now; use `submit` for
documents that must never be lost.

Server side, `SkillEndpoint` runs inside every `TaskWorker`: the worker's skill decides
what a request means (it receives the request as a one-task job), the endpoint only
decodes, bounds concurrency, replies and counts. It is also the worker's nats.micro
registration (`agentbus-worker`), so `$SRV` discovery lists it with live stats.

Client side, `request_summary` and `fan_out` never raise for a per-request failure:
each returns `RpcResult`s whose `error` says what happened (no responders, timeout, the
worker's error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig
from prometheus_client import Counter, Histogram

from agentbus import metrics, subjects, telemetry
from agentbus.discovery import WORKER_SERVICE, WorkerStats, micro_version
from agentbus.errors import AgentBusError, MessageDecodeError
from agentbus.messages import (
    SummarizeReply,
    SummarizeRequest,
    TaskAssign,
    decode,
    encode,
)

if TYPE_CHECKING:
    from agentbus.bus import Bus
    from agentbus.worker import Skill

__all__ = [
    "RPC_REQUESTS",
    "RPC_SECONDS",
    "RpcError",
    "RpcResult",
    "SkillEndpoint",
    "fan_out",
    "request_summary",
    "rpc_queue",
    "rpc_subject",
]

log = logging.getLogger("agentbus.rpc")

RPC_JOB_ID: Final = "rpc"
"""The job id of the one-task job a request becomes inside the worker."""
DEFAULT_FAN_OUT_CONCURRENCY: Final = 64
_REQUEST_OVERHEAD_BYTES: Final = 512

RPC_REQUESTS: Final = Counter(
    "agentbus_rpc_requests_total",
    "Request/reply calls served by workers, by outcome (ok, error, rejected)",
    ["service", "skill", "outcome"],
)
RPC_SECONDS: Final = Histogram(
    "agentbus_rpc_duration_seconds",
    "Time to serve one request/reply call",
    ["service", "skill"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class RpcError(AgentBusError):
    """A request/reply call failed: no responders, no reply in time, or the worker's error."""


def rpc_subject(skill: str) -> str:
    """`rpc.{skill}`: the request/reply subject of a skill (`rpc.summarize`)."""
    return f"rpc.{subjects.check_token(skill, field='skill')}"


def rpc_queue(skill: str) -> str:
    """The queue group of a skill's workers (`summarize-workers`), shared with its consumer."""
    return subjects.workers_consumer(skill)


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
        self.subject = rpc_subject(skill.name)
        self.queue = rpc_queue(skill.name)
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
        self._m_ok = RPC_REQUESTS.labels(*labels, "ok")
        self._m_error = RPC_REQUESTS.labels(*labels, "error")
        self._m_rejected = RPC_REQUESTS.labels(*labels, "rejected")
        self._m_seconds = RPC_SECONDS.labels(*labels)

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
            await self.bus.nc.flush()
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
        await self.bus.nc.flush()
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


@dataclass(frozen=True, slots=True)
class RpcResult:
    """The outcome of one request: a summary, or an error saying why not."""

    index: int
    summary: str | None = None
    error: str | None = None
    worker_id: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


async def request_summary(
    nc: NatsClient,
    text: str,
    *,
    sender: str,
    max_chars: int = 1200,
    timeout_s: float = 30.0,
    skill: str = subjects.SUMMARIZE_SKILL,
    max_bytes: int | None = None,
    index: int = 0,
) -> RpcResult:
    """One request on `rpc.{skill}`; never raises for a failed request (see `RpcResult`)."""
    subject = rpc_subject(skill)
    started = time.perf_counter()

    def result(**kw: object) -> RpcResult:
        ms = round((time.perf_counter() - started) * 1000, 3)
        return RpcResult(index=index, duration_ms=ms, **kw)  # type: ignore[arg-type]

    if not text.strip():
        return result(error="empty text")
    try:
        payload = encode(SummarizeRequest(text=text, max_chars=max_chars), sender=sender)
    except ValueError as e:
        return result(error=f"invalid request: {e}")
    caps = [c for c in (max_bytes, nc.max_payload) if c]
    cap = min(caps) if caps else 0
    if cap and len(payload) > cap:
        return result(
            error=f"request of {len(payload)} bytes is above the {cap}-byte message limit of "
            f"{subject}; submit large documents as jobs instead"
        )
    headers: dict[str, str] = {}
    telemetry.inject(headers)
    try:
        msg = await nc.request(subject, payload, timeout=timeout_s, headers=headers or None)
    except nats.errors.NoRespondersError:
        return result(error=f"no responders: no {skill} worker serves {subject}")
    except (TimeoutError, nats.errors.TimeoutError):
        return result(
            error=f"timeout: no reply on {subject} within {timeout_s:g}s (at-most-once: "
            "not retried)"
        )
    except nats.errors.Error as e:
        return result(error=f"request on {subject} failed: {e or type(e).__name__}")
    try:
        reply = decode(msg.data, SummarizeReply).payload
    except MessageDecodeError as e:
        return result(error=f"bad reply on {subject}: {e}")
    if not reply.ok:
        return result(error=f"worker {reply.worker_id}: {reply.error}", worker_id=reply.worker_id)
    return result(summary=reply.summary, worker_id=reply.worker_id)


async def fan_out(
    nc: NatsClient,
    texts: Sequence[str],
    *,
    sender: str,
    max_chars: int = 1200,
    timeout_s: float = 30.0,
    skill: str = subjects.SUMMARIZE_SKILL,
    concurrency: int = DEFAULT_FAN_OUT_CONCURRENCY,
    max_bytes: int | None = None,
) -> list[RpcResult]:
    """Summarize `texts` in parallel (at most `concurrency` requests outstanding); the
    results are in the order of `texts`, each with its own error if it failed."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, text: str) -> RpcResult:
        async with gate:
            return await request_summary(
                nc,
                text,
                sender=sender,
                max_chars=max_chars,
                timeout_s=timeout_s,
                skill=skill,
                max_bytes=max_bytes,
                index=i,
            )

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
