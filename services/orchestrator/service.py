"""The orchestrator: job intake, chunking, fan-out, result collection, reduce, job state.

All job state lives in JetStream (the jobs KV bucket, the job-parts bucket for chunk
summaries), updated with compare-and-set, so any number of replicas can share the work
and a replica restarted mid-job picks up where the last one stopped:

- a job message is acked only after its state is recorded and every task is published
  (task publishes carry `{job_id}:{task_id}` as `Nats-Msg-Id`, so a redelivery re-sends
  nothing new);
- a result is acked only after its summary and its index are recorded; the one update
  that completes a level starts the next level (publish first, then move the state, so a
  crash in between is repaired by the redelivered result).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ClassVar, Final

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from agentbus import metrics, subjects, telemetry
from agentbus.bus import Bus, ConsumerLoop, delivery_count
from agentbus.chunking import chunk_text, pack
from agentbus.documents import check_document, fetch_document
from agentbus.errors import AgentBusError, DocumentRejected, MessageDecodeError
from agentbus.logs import log_context
from agentbus.messages import (
    EventKind,
    JobState,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
    decode,
    decode_job_state,
    utcnow,
)
from agentbus.service import AgentService
from agentbus.settings import Settings
from orchestrator.errors import OrchestratorError

__all__ = ["Orchestrator", "task_id_for"]

log = logging.getLogger("orchestrator")

_PUBLISH_BATCH: Final = 64
_CAS_RETRIES: Final = 50


def task_id_for(level: int, index: int) -> str:
    return f"{level}-{index}"


def _part_key(job_id: str, level: int, index: int) -> str:
    return f"{job_id}.{level}.{index}"


class Orchestrator(AgentService):
    name: ClassVar[str] = "orchestrator"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.orchestrator
        self._jobs: KeyValue | None = None
        self._parts: KeyValue | None = None

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        self._jobs = await bus.kv(subjects.JOBS_BUCKET)
        self._parts = await bus.kv(subjects.JOB_PARTS_BUCKET)
        common = {"concurrency": self.cfg.concurrency, "fetch_timeout_s": 1.0}
        return [
            ConsumerLoop(
                bus,
                stream=subjects.JOBS_STREAM,
                durable=subjects.ORCHESTRATOR_CONSUMER,
                handler=self.handle_job,
                **common,  # type: ignore[arg-type]
            ),
            ConsumerLoop(
                bus,
                stream=subjects.RESULTS_STREAM,
                durable=subjects.ORCHESTRATOR_RESULTS_CONSUMER,
                handler=self.handle_result,
                **common,  # type: ignore[arg-type]
            ),
        ]

    # --- state ---------------------------------------------------------------------

    @property
    def jobs(self) -> KeyValue:
        assert self._jobs is not None
        return self._jobs

    async def _load(self, job_id: str) -> tuple[JobState, int] | None:
        try:
            entry = await self.jobs.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return decode_job_state(entry.value), entry.revision or 0

    async def _update(
        self, job_id: str, change: Callable[[JobState], JobState | None]
    ) -> JobState | None:
        """Compare-and-set loop: `change` returns the new state, or None for no change.

        Returns the state written, or None when `change` declined."""
        for _ in range(_CAS_RETRIES):
            loaded = await self._load(job_id)
            if loaded is None:
                raise OrchestratorError(
                    f"job {job_id}: no state in KV bucket {subjects.JOBS_BUCKET}"
                )
            state, revision = loaded
            new = change(state.model_copy(deep=True))
            if new is None:
                return None
            new.updated_at = utcnow()
            try:
                await self.jobs.update(job_id, new.model_dump_json().encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(0)
                continue
            return new
        raise OrchestratorError(f"job {job_id}: KV update kept conflicting")

    # --- intake --------------------------------------------------------------------

    async def handle_job(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            env = decode(msg.data, JobSubmit, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            await bus.reject(msg, reason=f"undecodable job: {e}", stream=subjects.JOBS_STREAM)
            return
        job = env.payload
        with (
            log_context(job_id=job.job_id),
            telemetry.span(
                "orchestrator job", headers=msg.headers, attributes={"agentbus.job_id": job.job_id}
            ),  # fmt: skip
        ):
            if delivery_count(msg) > self.settings.topology.max_deliver:
                await bus.dead_letter(
                    msg, reason="job intake over max_deliver", stream=subjects.JOBS_STREAM
                )
                await self._fail_new(job, "job intake failed repeatedly", category="intake")
                return
            await self._intake(msg, job)

    async def _document_text(self, job: JobSubmit) -> str:
        assert self.bus is not None
        if job.document is not None:
            data = await fetch_document(self.bus.js, job.document)
        elif job.text is not None:
            data = job.text.encode()
        else:
            raise DocumentRejected("job carries neither text nor a document reference")
        return check_document(data, max_bytes=self.settings.limits.max_document_bytes)

    async def _fail_new(self, job: JobSubmit, reason: str, *, category: str) -> None:
        """Record a job that could not even start as failed (creating its state if needed)."""
        state = JobState(job_id=job.job_id, status=JobStatus.FAILED, title=job.title, error=reason)
        try:
            await self.jobs.create(job.job_id, state.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:

            def fail(s: JobState) -> JobState | None:
                if s.status.terminal:
                    return None
                s.status, s.error = JobStatus.FAILED, reason
                return s

            await self._update(job.job_id, fail)
        await self._job_failed(job.job_id, reason, category=category)

    async def _intake(self, msg: Msg, job: JobSubmit) -> None:
        bus = self.bus
        assert bus is not None
        loaded = await self._load(job.job_id)
        if loaded is not None and (loaded[0].status.terminal or loaded[0].level > 0):
            await msg.ack()  # a re-submitted or redelivered job that has moved on
            return
        try:
            text = await self._document_text(job)
        except DocumentRejected as e:
            await bus.dead_letter(msg, reason=str(e), stream=subjects.JOBS_STREAM)
            await self._fail_new(job, str(e), category="rejected")
            return
        summary_chars = job.summary_chars or self.cfg.summary_chars
        chunks = chunk_text(text, max_chars=self.cfg.chunk_chars)
        if loaded is None:
            state = JobState(
                job_id=job.job_id,
                status=JobStatus.RUNNING,
                title=job.title,
                skill=job.skill,
                document_chars=len(text),
                summary_chars=summary_chars,
                chunks=len(chunks),
                level=0,
                level_tasks=len(chunks),
                trace_id=telemetry.current_trace_id(),
            )
            try:
                await self.jobs.create(job.job_id, state.model_dump_json().encode())
                metrics.JOBS_SUBMITTED.labels(self.name).inc()
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # another replica (or our previous delivery) created it
        await bus.emit(
            EventKind.JOB_ACCEPTED,
            job_id=job.job_id,
            event_id=f"{job.job_id}-accepted",
            data={"title": job.title, "chars": len(text), "summary_chars": summary_chars},
        )
        per_task = summary_chars if len(chunks) == 1 else self.cfg.chunk_summary_chars
        await self._publish_level(job.job_id, job.skill, 0, chunks, per_task)
        await bus.emit(
            EventKind.JOB_CHUNKED,
            job_id=job.job_id,
            event_id=f"{job.job_id}-chunked",
            data={"chunks": len(chunks), "chunk_chars": self.cfg.chunk_chars},
        )
        await msg.ack_sync()
        log.info("job accepted: %d chars in %d chunk(s)", len(text), len(chunks))

    async def _publish_level(
        self, job_id: str, skill: str, level: int, texts: list[str], max_chars: int
    ) -> None:
        bus = self.bus
        assert bus is not None
        subject = subjects.task_assign(skill)

        async def one(index: int, text: str) -> None:
            task_id = task_id_for(level, index)
            task = TaskAssign(
                job_id=job_id, task_id=task_id, level=level, index=index, count=len(texts),
                text=text, max_chars=max_chars,
            )  # fmt: skip
            await bus.publish(
                subject, task, msg_id=f"{job_id}:{task_id}", stream=subjects.TASKS_STREAM
            )

        for start in range(0, len(texts), _PUBLISH_BATCH):
            batch = texts[start : start + _PUBLISH_BATCH]
            await asyncio.gather(*(one(start + i, t) for i, t in enumerate(batch)))

    # --- collection and reduce -------------------------------------------------------

    async def handle_result(self, msg: Msg) -> None:
        bus = self.bus
        assert bus is not None
        try:
            env = decode(msg.data, TaskResult, max_bytes=self.settings.limits.max_message_bytes)
        except MessageDecodeError as e:
            await bus.reject(msg, reason=f"undecodable result: {e}", stream=subjects.RESULTS_STREAM)
            return
        r = env.payload
        with (
            log_context(job_id=r.job_id, task_id=r.task_id),
            telemetry.span(
                "orchestrator result", headers=msg.headers, attributes={"agentbus.job_id": r.job_id}
            ),  # fmt: skip
        ):
            try:
                await self._collect(r)
            except OrchestratorError as e:
                log.warning("result dropped: %s", e)
                await msg.term()
                return
            await msg.ack()

    async def _collect(self, r: TaskResult) -> None:
        loaded = await self._load(r.job_id)
        if loaded is None:
            raise OrchestratorError(f"result for unknown job {r.job_id}")
        state = loaded[0]
        if state.status.terminal or r.level < state.level:
            return  # late duplicate
        if r.level > state.level:
            raise OrchestratorError(f"result of level {r.level} ahead of job level {state.level}")
        if not r.ok:
            await self._fail(r.job_id, r.error or "task failed", task_id=r.task_id)
            return
        assert self._parts is not None
        await self._parts.put(_part_key(r.job_id, r.level, r.index), r.summary.encode())

        def record(s: JobState) -> JobState | None:
            if s.status.terminal or s.level != r.level or r.index in s.level_done:
                return None
            s.level_done.append(r.index)
            s.level_done.sort()
            s.tasks_done_total += 1
            return s

        new = await self._update(r.job_id, record)
        current = new or (await self._load(r.job_id) or (state, 0))[0]
        if (
            not current.status.terminal
            and current.level == r.level
            and len(current.level_done) >= current.level_tasks
        ):
            await self._advance(current)

    async def _advance(self, state: JobState) -> None:
        """Every task of `state.level` is done: finish the job or start the next reduce level."""
        bus = self.bus
        assert bus is not None and self._parts is not None
        level = state.level

        async def part(index: int) -> str:
            assert self._parts is not None
            entry = await self._parts.get(_part_key(state.job_id, level, index))
            return (entry.value or b"").decode()

        parts = await asyncio.gather(*(part(i) for i in range(state.level_tasks)))
        combined = "\n\n".join(p for p in parts if p)
        if len(combined) <= state.summary_chars or len(parts) == 1:
            await self._complete(state, combined)
            return
        groups = pack(parts, max_chars=self.cfg.chunk_chars)
        per_task = state.summary_chars if len(groups) == 1 else self.cfg.chunk_summary_chars
        with telemetry.span("orchestrator reduce", attributes={"agentbus.level": level + 1}):
            await self._publish_level(state.job_id, state.skill, level + 1, groups, per_task)

        def next_level(s: JobState) -> JobState | None:
            if s.status.terminal or s.level != level:
                return None
            s.status = JobStatus.REDUCING
            s.level = level + 1
            s.level_tasks = len(groups)
            s.level_done = []
            return s

        if await self._update(state.job_id, next_level) is not None:
            await bus.emit(
                EventKind.JOB_REDUCING,
                job_id=state.job_id,
                event_id=f"{state.job_id}-reduce-{level + 1}",
                data={"level": level + 1, "tasks": len(groups), "input_chars": len(combined)},
            )

    async def _complete(self, state: JobState, summary: str) -> None:
        assert self.bus is not None

        def complete(s: JobState) -> JobState | None:
            if s.status.terminal or s.level != state.level:
                return None
            s.status = JobStatus.COMPLETED
            s.summary = summary
            return s

        done = await self._update(state.job_id, complete)
        if done is None:
            return
        seconds = (done.updated_at - done.created_at).total_seconds()
        metrics.JOBS_COMPLETED.labels(self.name).inc()
        metrics.JOB_SECONDS.labels(self.name).observe(max(seconds, 0.0))
        await self.bus.emit(
            EventKind.JOB_COMPLETED,
            job_id=state.job_id,
            event_id=f"{state.job_id}-completed",
            data={"summary_chars": len(summary), "levels": state.level + 1, "seconds": seconds},
        )
        await self._drop_parts(done)
        log.info("job completed in %.3fs (%d chars)", seconds, len(summary))

    async def _drop_parts(self, state: JobState) -> None:
        assert self._parts is not None
        if state.chunks <= 1 and state.level == 0:
            keys = [_part_key(state.job_id, 0, 0)]
        else:
            try:
                keys = await self._parts.keys(filters=[f"{state.job_id}.>"])
            except (nats.js.errors.NoKeysError, AgentBusError):
                keys = []
        for key in keys:
            try:
                await self._parts.purge(key)
            except nats.js.errors.Error as e:
                log.debug("could not purge part %s: %s", key, e)

    async def _fail(self, job_id: str, reason: str, *, task_id: str | None = None) -> None:
        def fail(s: JobState) -> JobState | None:
            if s.status.terminal:
                return None
            s.status = JobStatus.FAILED
            s.error = f"task {task_id}: {reason}" if task_id else reason
            return s

        if await self._update(job_id, fail) is not None:
            await self._job_failed(job_id, reason, category="task")

    async def _job_failed(self, job_id: str, reason: str, *, category: str) -> None:
        assert self.bus is not None
        metrics.JOBS_FAILED.labels(self.name, category).inc()
        await self.bus.emit(
            EventKind.JOB_FAILED,
            job_id=job_id,
            event_id=f"{job_id}-failed",
            data={"reason": reason[:1000]},
        )
        log.warning("job failed: %s", reason)
