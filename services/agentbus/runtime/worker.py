"""The generic task worker: one skill, shared durable pull consumers on
`tasks.{skill}.assign` (normal priority) and `tasks.{skill}.assign.{high,low}`, N
concurrent slots per replica, high priority first without starving low
(`agentbus.bus.priority_pull`).

Per task: decode (garbage goes to the DLQ), run the skill while sending `in_progress`
heartbeats, publish the result, record the event, then ack. A failure naks with backoff;
on the last allowed delivery (or a non-retryable error) the task is dead-lettered and a
failed result tells the orchestrator why.

A new skill is one module with a `Skill` and one entry point in the `agentbus.skills`
group; nothing here changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.bus.headers import delivery_count, stored_at_s
from agentbus.bus.priority_pull import PriorityConsumerLoop
from agentbus.bus.tenant_slots import TenantBudgets
from agentbus.contract import subjects
from agentbus.contract.errors import BusError, MessageDecodeError, SkillError
from agentbus.contract.messages import EventKind, TaskAssign, TaskResult, TokenUsage, decode
from agentbus.contract.priority import PRIORITIES, task_consumer
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import budget_tokens, limits_of, slot_consumer, tenant_names
from agentbus.contract.tenants import task_consumer as tenant_consumer
from agentbus.contract.version import agentbus_version
from agentbus.observability import metrics, telemetry
from agentbus.observability.logs import log_context
from agentbus.runtime.cancels import CancelWatch
from agentbus.runtime.deltas import collecting
from agentbus.runtime.rpc import SkillEndpoint
from agentbus.runtime.service import AgentService

__all__ = ["Skill", "SkillError", "SkillOutput", "TaskWorker"]

log = logging.getLogger("agentbus.worker")


@dataclass(frozen=True)
class SkillOutput:
    text: str
    usage: TokenUsage | None = None


class Skill(Protocol):
    """What a worker runs: declared once by an `agentbus.skills` entry point whose name is
    the skill's `name` (a class attribute is fine: both are read-only here)."""

    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str: ...

    async def run(self, task: TaskAssign) -> SkillOutput: ...

    async def aclose(self) -> None: ...


def _stable_id(*parts: str) -> str:
    """A deterministic event id (a valid subject token, at most 128 characters)."""
    joined = "-".join(parts)
    return joined if len(joined) <= 128 else uuid.uuid5(uuid.NAMESPACE_URL, joined).hex


class TaskWorker(AgentService):
    """A worker replica of one skill."""

    name: ClassVar[str] = "worker"

    def __init__(self, settings: Settings, skill: Skill) -> None:
        super().__init__(settings)
        self.skill = skill
        self.max_deliver = settings.topology.max_deliver
        self.backoff_s = settings.worker.backoff_s or [1.0]
        self._stream = subjects.TASKS_STREAM
        self.task_counts: Counter[str] = Counter()
        self.endpoint: SkillEndpoint | None = None
        """Serves `rpc.{skill}` and the nats.micro registration (`AGENTBUS_WORKER__RPC`)."""
        self._beating: dict[int, Msg] = {}
        self._beat: asyncio.Task[None] | None = None
        self.cancels: CancelWatch | None = None
        """Canceled jobs: the broadcast, and the job state for a job first met."""
        self.budgets: TenantBudgets | None = None

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        self.cancels = CancelWatch(bus)
        await self.cancels.start()
        if self.settings.worker.rpc:
            self.endpoint = SkillEndpoint(
                bus, self.skill, version=agentbus_version(),
                concurrency=self.settings.worker.concurrency,
                max_message_bytes=self.settings.limits.max_message_bytes,
                state=lambda: self.state, tasks_in_flight=self.in_flight,
                task_counts=self.task_counts,
            )  # fmt: skip
            await self.endpoint.start()
        metrics.init_worker(bus.service, skill=self.skill.name, backend=self.skill.backend)
        cfg = self.settings.tenants
        tenants = tenant_names(cfg)
        self.budgets = TenantBudgets(bus, cfg)
        return [
            # one consumer per priority, high first without starving low
            PriorityConsumerLoop(
                bus,
                stream=self._stream,
                durables={p: task_consumer(self.skill.name, p) for p in PRIORITIES},
                handler=self.handle,
                concurrency=self.settings.worker.concurrency,
                fetch_timeout_s=self.settings.worker.fetch_timeout_s,
                # and, with tenants configured, each priority shared among them by weight
                tenants={
                    p: {t: tenant_consumer(self.skill.name, p, t) for t in tenants}
                    for p in PRIORITIES
                },
                weights={t: limits_of(t, cfg).weight for t in tenants},
                # a capped tenant's tasks start only on one of its run permits
                slots={
                    t: slot_consumer(self.skill.name, t)
                    for t in tenants[1:]
                    if limits_of(t, cfg).max_in_flight is not None
                },
                keepalive_s=self.settings.worker.in_progress_interval_s,
                budgets=self.budgets,
            )
        ]

    def pause(self) -> None:
        super().pause()
        if self.endpoint is not None:
            self.endpoint.pause()

    def resume(self) -> None:
        super().resume()
        if self.endpoint is not None:
            self.endpoint.resume()

    async def wait_paused(self, *, timeout_s: float | None = None) -> bool:
        """Also until this replica has left the `rpc.{skill}` queue group."""
        timeout = self.pause_timeout_s if timeout_s is None else timeout_s
        endpoint = self.endpoint
        if endpoint is None:
            return await super().wait_paused(timeout_s=timeout)

        async def rpc_left() -> bool:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(endpoint.settled(), timeout)
            return not endpoint.serving

        tasks_paused, rpc_paused = await asyncio.gather(
            super().wait_paused(timeout_s=timeout), rpc_left()
        )
        return tasks_paused and rpc_paused

    async def stop(self, *, grace_s: float) -> bool:
        if self.endpoint is None:
            return await super().stop(grace_s=grace_s)
        rpc_done, tasks_done = await asyncio.gather(
            self.endpoint.stop(grace_s=grace_s), super().stop(grace_s=grace_s)
        )
        return rpc_done and tasks_done

    async def teardown(self) -> None:
        if self.cancels is not None:
            await self.cancels.stop()
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        await self.skill.aclose()

    async def _heartbeat(self) -> None:
        """One loop for every task in flight (not a task and a timer per task): each gets
        `in_progress` at least every `in_progress_interval_s`."""
        interval = self.settings.worker.in_progress_interval_s
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._beating.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    @contextlib.contextmanager
    def _in_progress(self, msg: Msg) -> Iterator[None]:
        """Heartbeats for the whole handling (skill, result, events, ack): neither a long
        summary nor publishes retried through an outage let `ack_wait` expire."""
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._heartbeat())
        self._beating[id(msg)] = msg  # (a nats-py Msg is not hashable)
        try:
            yield
        finally:
            del self._beating[id(msg)]

    async def handle(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            task = decode(msg.data, TaskAssign, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            metrics.TASKS_PROCESSED.labels(bus.service, self.skill.name, "rejected").inc()
            self.task_counts["rejected"] += 1
            await bus.reject(msg, reason=f"undecodable task: {e}", stream=self._stream)
            return
        t = task.payload
        attempt = delivery_count(msg)
        with (
            log_context(
                job_id=t.job_id, task_id=t.task_id, trace_id=telemetry.trace_id_of(msg.headers)
            ),
            telemetry.span(
                f"task {self.skill.name}",
                headers=msg.headers,
                kind="consumer",
                attributes={
                    "agentbus.job_id": t.job_id,
                    "agentbus.task_id": t.task_id,
                    "agentbus.level": t.level,
                    "agentbus.attempt": attempt,
                },
            ),
            self._in_progress(msg),
        ):
            if attempt > self.max_deliver:
                await self._give_up(msg, t, f"over max_deliver ({attempt} > {self.max_deliver})")
                return
            cancels = self.cancels
            assert cancels is not None
            if cancels.check(t.job_id, stored_at_s=stored_at_s(msg)):
                await self._canceled(msg, t, stage="queued")
                return
            # a spent budget with `over_budget` "fail" fails the job ("wait": not pulled)
            refused = await self.budgets.refusal(t.tenant) if self.budgets else None
            if refused is not None:
                await self._give_up(msg, t, refused, dead_letter=False)
                return
            # The started event goes out while the skill runs (a round trip less in every
            # slot); it is confirmed before any outcome of the task is published.
            announced = bus.emit_soon(
                EventKind.TASK_STARTED,
                job_id=t.job_id,
                task_id=t.task_id,
                data={
                    "attempt": attempt,
                    "level": t.level,
                    "chars": len(t.text),
                    **({"tenant": t.tenant} if t.tenant else {}),
                },
            )
            started = time.perf_counter()
            with collecting(bus, t) as sink:  # the skill's task copies this context
                run = asyncio.ensure_future(self.skill.run(t))
            try:
                with cancels.book.running(t.job_id, run):
                    out = await run
                await sink.flush()  # the task's deltas come before its result
            except SkillError as e:
                await announced
                await self._failed(msg, t, attempt, str(e), retryable=e.retryable)
                return
            except Exception as e:
                log.exception("skill %s crashed", self.skill.name)
                await announced
                await self._failed(msg, t, attempt, f"{type(e).__name__}: {e}", retryable=True)
                return
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if (
                    run.cancelled()
                    and cancels.seen(t.job_id)
                    and not (current is not None and current.cancelling())
                ):  # the job was canceled, not this worker stopped
                    await announced
                    await self._canceled(msg, t, stage="running")
                    return
                announced.cancel()
                raise
            await announced
            elapsed = time.perf_counter() - started
            metrics.TASK_SECONDS.labels(bus.service, self.skill.name).observe(elapsed)
            if out.usage is not None:
                tokens = metrics.SUMMARIZER_TOKENS
                tokens.labels(bus.service, self.skill.backend, "prompt").inc(
                    out.usage.prompt_tokens
                )
                tokens.labels(bus.service, self.skill.backend, "completion").inc(
                    out.usage.completion_tokens
                )
            result = TaskResult(
                job_id=t.job_id,
                task_id=t.task_id,
                level=t.level,
                index=t.index,
                ok=True,
                summary=out.text,
                worker_id=bus.agent_id,
                duration_ms=elapsed * 1000,
                usage=out.usage,
                tenant=t.tenant,
                tokens=budget_tokens(
                    out.usage, input_chars=len(t.text), output_chars=len(out.text)
                ),
            )
            # result and event go out side by side; the task is acked only once both
            # are stored
            completed = bus.emit_soon(
                EventKind.TASK_COMPLETED,
                job_id=t.job_id,
                task_id=t.task_id,
                result=True,
                # one per task: a redelivery after the work was done records nothing new
                event_id=_stable_id(t.job_id, t.task_id, "completed"),
                data={
                    "attempt": attempt,
                    "duration_ms": round(elapsed * 1000, 3),
                    "summary_chars": len(out.text),
                    "usage": out.usage.model_dump() if out.usage else None,
                    **({"tenant": t.tenant} if t.tenant else {}),
                },
            )
            await self._publish_result(result)
            await completed
            await self._ack(msg)
            metrics.TASKS_PROCESSED.labels(bus.service, self.skill.name, "ok").inc()
            self.task_counts["ok"] += 1
            log.debug("task done in %.3fs (attempt %d)", elapsed, attempt)

    async def _canceled(self, msg: Msg, t: TaskAssign, *, stage: str) -> None:
        """A task of a canceled job, dropped before it ran (`queued`) or interrupted
        (`running`): acked without a result (the job records nothing more), counted."""
        assert self.bus is not None
        # the event is stored before the ack (a redelivery records it once: stable id);
        # the drops of many slots share a publish (the emitter's group commit)
        await self.bus.emit_soon(
            EventKind.TASK_CANCELED,
            job_id=t.job_id,
            task_id=t.task_id,
            event_id=_stable_id(t.job_id, t.task_id, "canceled"),
            data={"stage": stage, "level": t.level},
        )
        await self._ack(msg)
        outcome = "interrupted" if stage == "running" else "dropped"
        metrics.TASKS_CANCELED.labels(self.bus.service, self.skill.name, outcome).inc()
        self.task_counts[f"canceled_{stage}"] += 1

    async def _ack(self, msg: Msg) -> None:
        # Not waiting for the server's confirmation keeps a round trip out of every slot:
        # the result is stored already, and a task redelivered because its ack was lost
        # is deduplicated (same result and event ids).
        try:
            await msg.ack()
        except Exception as e:
            log.warning("ack of %s not sent: %s", msg.subject, e)

    async def _publish_result(self, result: TaskResult) -> None:
        assert self.bus is not None
        # a failure has its own id, so that the success of a replayed task is not
        # deduplicated against it
        msg_id = f"{result.job_id}:{result.task_id}" + ("" if result.ok else ":failed")
        await self.bus.publish(
            subjects.result_subject(result.job_id, result.task_id),
            result,
            msg_id=msg_id,
            stream=subjects.RESULTS_STREAM,
        )

    async def _failed(
        self, msg: Msg, t: TaskAssign, attempt: int, reason: str, *, retryable: bool
    ) -> None:
        assert self.bus is not None
        if retryable and attempt < self.max_deliver:
            delay = self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)]
            log.warning("task failed (attempt %d/%d), retry in %.1fs: %s",
                        attempt, self.max_deliver, delay, reason)  # fmt: skip
            with contextlib.suppress(BusError):
                await self.bus.emit(
                    EventKind.TASK_RETRIED,
                    job_id=t.job_id,
                    task_id=t.task_id,
                    data={"attempt": attempt, "delay_s": delay, "reason": reason[:512]},
                )
            await msg.nak(delay=delay)
            metrics.TASKS_PROCESSED.labels(self.bus.service, self.skill.name, "retried").inc()
            self.task_counts["retried"] += 1
            return
        await self._give_up(msg, t, f"failed after {attempt} attempt(s): {reason}")

    async def _give_up(
        self, msg: Msg, t: TaskAssign, reason: str, *, dead_letter: bool = True
    ) -> None:
        """Dead-letter the task (or only ack it) and tell the orchestrator the job failed,
        with the reason."""
        assert self.bus is not None
        result = TaskResult(
            job_id=t.job_id,
            task_id=t.task_id,
            level=t.level,
            index=t.index,
            ok=False,
            error=reason[:2000],
            worker_id=self.bus.agent_id,
            duration_ms=0,
        )
        await self._publish_result(result)
        if not dead_letter:  # refused by a rule, not broken: nothing to replay
            await self._ack(msg)
            self.task_counts["refused"] += 1
            return
        await self.bus.emit(
            EventKind.TASK_DEAD_LETTERED,
            job_id=t.job_id,
            task_id=t.task_id,
            data={"reason": reason[:512]},
        )
        await self.bus.dead_letter(msg, reason=reason, stream=self._stream)
        metrics.TASKS_PROCESSED.labels(self.bus.service, self.skill.name, "dead_lettered").inc()
        self.task_counts["dead_lettered"] += 1
