"""The generic task worker: one skill, a shared durable pull consumer on
`tasks.{skill}.assign`, N concurrent slots per replica.

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
from dataclasses import dataclass
from typing import ClassVar, Protocol

from nats.aio.msg import Msg

from agentbus import metrics, subjects, telemetry
from agentbus.bus import Bus, BusError, ConsumerLoop, delivery_count
from agentbus.errors import AgentBusError, MessageDecodeError
from agentbus.logs import log_context
from agentbus.messages import EventKind, TaskAssign, TaskResult, TokenUsage, decode
from agentbus.service import AgentService
from agentbus.settings import Settings

__all__ = ["Skill", "SkillError", "SkillOutput", "TaskWorker"]

log = logging.getLogger("agentbus.worker")


@dataclass(frozen=True)
class SkillOutput:
    text: str
    usage: TokenUsage | None = None


class SkillError(AgentBusError):
    """A skill failed; `retryable=False` sends the task to the DLQ at once."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Skill(Protocol):
    name: str
    backend: str

    async def run(self, task: TaskAssign) -> SkillOutput: ...

    async def aclose(self) -> None: ...


class TaskWorker(AgentService):
    """A worker replica of one skill."""

    name: ClassVar[str] = "worker"

    def __init__(self, settings: Settings, skill: Skill) -> None:
        super().__init__(settings)
        self.skill = skill
        self.max_deliver = settings.topology.max_deliver
        self.backoff_s = settings.worker.backoff_s or [1.0]
        self._stream = subjects.TASKS_STREAM

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        return [
            ConsumerLoop(
                bus,
                stream=self._stream,
                durable=subjects.workers_consumer(self.skill.name),
                handler=self.handle,
                concurrency=self.settings.worker.concurrency,
                fetch_timeout_s=self.settings.worker.fetch_timeout_s,
            )
        ]

    async def teardown(self) -> None:
        await self.skill.aclose()

    async def _heartbeat(self, msg: Msg) -> None:
        interval = self.settings.worker.in_progress_interval_s
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def handle(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            task = decode(msg.data, TaskAssign, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            metrics.TASKS_PROCESSED.labels(bus.service, self.skill.name, "rejected").inc()
            await bus.reject(msg, reason=f"undecodable task: {e}", stream=self._stream)
            return
        t = task.payload
        attempt = delivery_count(msg)
        with (
            log_context(job_id=t.job_id, task_id=t.task_id),
            telemetry.span(
                f"task {self.skill.name}",
                headers=msg.headers,
                attributes={"agentbus.job_id": t.job_id, "agentbus.task_id": t.task_id},
            ),
        ):
            if attempt > self.max_deliver:
                await self._give_up(msg, t, f"over max_deliver ({attempt} > {self.max_deliver})")
                return
            await bus.emit(
                EventKind.TASK_STARTED,
                job_id=t.job_id,
                task_id=t.task_id,
                data={"attempt": attempt, "level": t.level, "chars": len(t.text)},
            )
            started = time.perf_counter()
            beat = asyncio.create_task(self._heartbeat(msg))
            try:
                out = await self.skill.run(t)
            except SkillError as e:
                await self._failed(msg, t, attempt, str(e), retryable=e.retryable)
                return
            except Exception as e:
                log.exception("skill %s crashed", self.skill.name)
                await self._failed(msg, t, attempt, f"{type(e).__name__}: {e}", retryable=True)
                return
            finally:
                beat.cancel()
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
            )
            await self._publish_result(result)
            await bus.emit(
                EventKind.TASK_COMPLETED,
                job_id=t.job_id,
                task_id=t.task_id,
                result=True,
                data={
                    "attempt": attempt,
                    "duration_ms": round(elapsed * 1000, 3),
                    "summary_chars": len(out.text),
                    "usage": out.usage.model_dump() if out.usage else None,
                },
            )
            await self._ack(msg)
            metrics.TASKS_PROCESSED.labels(bus.service, self.skill.name, "ok").inc()

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack_sync(timeout=5.0)
        except Exception as e:  # the result is published; a redelivery is deduplicated
            log.warning("ack of %s not confirmed: %s", msg.subject, e)

    async def _publish_result(self, result: TaskResult) -> None:
        assert self.bus is not None
        await self.bus.publish(
            subjects.result_subject(result.job_id, result.task_id),
            result,
            msg_id=f"{result.job_id}:{result.task_id}",
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
            return
        await self._give_up(msg, t, f"failed after {attempt} attempt(s): {reason}")

    async def _give_up(self, msg: Msg, t: TaskAssign, reason: str) -> None:
        """Dead-letter the task and tell the orchestrator the job failed, with the reason."""
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
        await self.bus.emit(
            EventKind.TASK_DEAD_LETTERED,
            job_id=t.job_id,
            task_id=t.task_id,
            data={"reason": reason[:512]},
        )
        await self.bus.dead_letter(msg, reason=reason, stream=self._stream)
        metrics.TASKS_PROCESSED.labels(self.bus.service, self.skill.name, "dead_lettered").inc()
