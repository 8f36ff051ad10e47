"""Result collection: the results of one job recorded in batches, levels advanced, jobs
completed or failed. The decisions are `orchestrator.lifecycle`'s; this module does the
I/O around them.

Contention on one job is designed away rather than retried: every result a replica
receives for a job joins that job's queue, and one writer per job and replica records
everything queued in one compare-and-set transition (a 3,500-chunk job with 32 results in
flight is ~100 writes, not 3,500 racing ones). A result is acked only after the write
that records it (and, for the one completing a level, after the next level is published
or the job completed), so a crash anywhere is repaired by redelivery: the bitmap makes a
repeated result a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors

from agentbus.bus.core import Bus
from agentbus.bus.documents import store_document
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError
from agentbus.contract.messages import (
    DocumentRef,
    EventKind,
    JobState,
    JobStatus,
    StreamItem,
    StreamKind,
    TaskAssign,
    TaskResult,
)
from agentbus.contract.messages import utcnow as _utcnow
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import DEFAULT_TENANT
from agentbus.contract.tenants import task_subject as tenant_task_subject
from agentbus.observability import metrics, telemetry
from agentbus_orchestrator import lifecycle, progress
from agentbus_orchestrator.lifecycle import Completion, Outcome, ResultKey
from agentbus_orchestrator.state import JobStore

__all__ = ["Collector", "part_key"]

log = logging.getLogger("orchestrator")

_PUBLISH_BATCH: Final = 64
_PARTS_READ_BATCH: Final = 256
_TIMER_ACK_TRIES: Final = 8
_TIMER_ACK_TIMEOUT_S: Final = 5.0
_TIMER_ACK_MAX_BACKOFF_S: Final = 10.0


_SUCCESS: Final = (Outcome.RECORDED, Outcome.DUPLICATE)


def part_key(job_id: str, level: int, index: int) -> str:
    return f"{job_id}.{level}.{index}"


def _key(r: TaskResult) -> ResultKey:
    return ResultKey(
        level=r.level, index=r.index, ok=r.ok, task_id=r.task_id, error=r.error, usage=r.usage
    )


@dataclass
class _Queue:
    items: list[tuple[TaskResult, asyncio.Future[Outcome]]] = field(default_factory=list)


class Collector:
    """Records results (batched per job), advances levels, completes and fails jobs."""

    def __init__(self, bus: Bus, store: JobStore, settings: Settings, *, service: str) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.cfg = settings.orchestrator
        self.service = service
        self._queues: dict[str, _Queue] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self._ackers: set[asyncio.Task[None]] = set()
        self.writes = 0
        self.results = 0

    # --- batching ----------------------------------------------------------------------

    async def collect(self, r: TaskResult) -> Outcome:
        """Record one result; returns once it is recorded (and its level advanced when it
        completed one). Raises what the write raised (`StateConflict`, `UnknownJob`, ...)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(r.job_id)
        if queue is None:
            queue = self._queues[r.job_id] = _Queue()
            writer = asyncio.create_task(self._drain(r.job_id, queue))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        queue.items.append((r, future))
        return await future

    async def _drain(self, job_id: str, queue: _Queue) -> None:
        try:
            while queue.items:
                batch, queue.items = queue.items, []
                try:
                    outcomes = await self.record([r for r, _ in batch])
                except Exception as e:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            if self._queues.get(job_id) is queue:
                del self._queues[job_id]

    # --- recording -----------------------------------------------------------------------

    async def record(self, results: Sequence[TaskResult]) -> list[Outcome]:
        """Record results of one job in one transition; advance the level they complete."""
        job_id = results[0].job_id
        keys = [_key(r) for r in results]
        now = _utcnow()
        # summaries above the inline limit are final only on a one-task level; store them
        # first so that the completing transition can reference them
        limit = self.settings.limits.inline_limit_bytes
        refs = {
            i: await self._store_summary(job_id, r.summary)
            for i, r in enumerate(results)
            # (a UTF-8 character is at most 4 bytes: most summaries skip the encode)
            if r.ok and len(r.summary) * 4 > limit and len(r.summary.encode()) > limit
        }
        # the chunk items are stored before the transition that records their results
        # (side by side with the parts: no extra round trip), so any job's final item
        # comes after every chunk item in its stream
        known = self.store.known(job_id)
        view = known[0] if known is not None else None
        items = [self.bus.progress(i) for i in progress.chunk_items(view, job_id, results, refs)]
        if items:
            await asyncio.gather(self._store_parts(job_id, results), *items)
        else:  # a one-task level: no task per write
            await self._store_parts(job_id, results)
        outcomes: list[Outcome] = []
        completed_by: list[TaskResult] = []

        def change(state: JobState) -> JobState | None:
            new, outs = lifecycle.record(state, keys, now=now)
            outcomes[:] = outs
            completed_by.clear()
            if state.level_tasks != 1:
                return new
            # the one task of a one-task level (a one-chunk job, or the last reduce
            # step): its summary is the final one, recorded and completed in one write
            i = next(
                (
                    i
                    for i, (k, o) in enumerate(zip(keys, outs, strict=True))
                    if k.ok and k.level == state.level and o in _SUCCESS
                ),
                None,
            )
            if i is None:
                return new
            r = results[i]
            done = lifecycle.complete(
                state, level=state.level, summary=r.summary, summary_ref=refs.get(i),
                now=now, final=keys[i],
            )  # fmt: skip
            if done is not None:
                completed_by.append(r)
            return done or new

        written, current = await self.store.transition(job_id, change)
        self.writes += written is not None
        self.results += len(results)
        for outcome in outcomes:
            metrics.RESULTS_RECORDED.labels(self.service, outcome.value).inc()
        if written is not None:
            if completed_by:
                await self._on_completed(written, levels=written.level + 1)
            elif Outcome.FAILED in outcomes and written.status is JobStatus.FAILED:
                await self.job_failed(job_id, written.error or "task failed", category="task")
                await self.end_timer(written)
        if current.status is JobStatus.CANCELED:
            # parts stored just before the transition found the job canceled: removed
            # again (the cancel dropped the job's parts; these came after)
            await self._purge_parts(job_id, results)
        if (
            lifecycle.level_complete(current)
            and current.level_tasks > 1
            and any(k.level == current.level for k in keys)
        ):
            await self.advance(current)
        return outcomes

    async def _store_summary(self, job_id: str, summary: str) -> DocumentRef:
        return await store_document(
            self.bus.js, name=f"{job_id}.summary.txt", data=summary.encode()
        )

    async def _store_parts(self, job_id: str, results: Sequence[TaskResult]) -> None:
        """Store the summaries of a multi-task level's results under their own keys, before
        the transition that records them (first writer wins: a re-run never replaces a
        recorded part)."""
        known = self.store.known(job_id)
        view = known[0] if known is not None else None

        async def put(r: TaskResult) -> None:
            if view is not None and (
                progress.recorded(view, r) or (view.level == r.level and view.level_tasks == 1)
            ):
                return
            # stored by an earlier delivery: kept
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self.bus.kv_create(
                    subjects.JOB_PARTS_BUCKET,
                    part_key(job_id, r.level, r.index),
                    r.summary.encode(),
                )

        await asyncio.gather(*(put(r) for r in results if r.ok))

    async def _purge_parts(self, job_id: str, results: Sequence[TaskResult]) -> None:
        kv = await self.bus.kv(subjects.JOB_PARTS_BUCKET)
        await asyncio.gather(
            *(kv.purge(part_key(job_id, r.level, r.index)) for r in results if r.ok),
            return_exceptions=True,
        )

    async def _read_parts(self, state: JobState) -> list[str]:
        kv = await self.bus.kv(subjects.JOB_PARTS_BUCKET)

        async def get(index: int) -> str:
            try:
                entry = await kv.get(part_key(state.job_id, state.level, index))
            except nats.js.errors.KeyNotFoundError:
                log.warning("job %s: part %d.%d missing", state.job_id, state.level, index)
                return ""
            return (entry.value or b"").decode()

        parts: list[str] = []
        for start in range(0, state.level_tasks, _PARTS_READ_BATCH):
            stop = min(start + _PARTS_READ_BATCH, state.level_tasks)
            parts += await asyncio.gather(*(get(i) for i in range(start, stop)))
        return parts

    # --- levels --------------------------------------------------------------------------

    async def advance(self, state: JobState) -> None:
        """Every task of `state.level` is recorded: complete the job or start the next
        reduce level (its tasks are published before the state moves, so a crash in
        between is repaired by the redelivered result that completed the level)."""
        parts = await self._read_parts(state)
        plan = lifecycle.plan_next(
            state,
            parts,
            chunk_chars=self.cfg.chunk_chars,
            chunk_summary_chars=self.cfg.chunk_summary_chars,
            max_reduce_levels=self.cfg.max_reduce_levels,
        )
        if isinstance(plan, Completion):
            await self.complete(state, plan.summary)
            return
        with telemetry.span(
            "orchestrator reduce",
            attributes={"agentbus.job_id": state.job_id, "agentbus.level": plan.level},
        ):
            await asyncio.gather(
                self.publish_level(
                    state.job_id,
                    state.skill,
                    plan.level,
                    plan.groups,
                    plan.max_chars,
                    priority=state.priority,
                    tenant=state.tenant,
                ),
                self.bus.progress(
                    StreamItem(
                        job_id=state.job_id,
                        kind=StreamKind.REDUCE,
                        level=plan.level,
                        count=len(plan.groups),
                    )
                ),
            )
        level = state.level
        written, _ = await self.store.transition(
            state.job_id,
            lambda s: lifecycle.next_level(s, level=level, tasks=len(plan.groups), now=_utcnow()),
        )
        if written is not None:
            await self.bus.emit(
                EventKind.JOB_REDUCING,
                job_id=state.job_id,
                event_id=f"{state.job_id}-reduce-{plan.level}",
                data={
                    "level": plan.level,
                    "tasks": len(plan.groups),
                    "input_chars": sum(len(p) for p in parts),
                },
            )

    async def publish_level(
        self,
        job_id: str,
        skill: str,
        level: int,
        texts: list[str],
        max_chars: int,
        *,
        priority: Priority = Priority.NORMAL,
        tenant: str = DEFAULT_TENANT,
    ) -> int:
        """One task per text, on the subject of the job's priority and tenant (map and
        reduce). Returns how many the stream stored anew: a task published again within
        the duplicate window is not (nor, rarely, one whose first try's ack was lost)."""
        bus = self.bus
        subject = tenant_task_subject(skill, priority, tenant)
        wire_priority = None if priority is Priority.NORMAL else priority
        wire_tenant = None if tenant == DEFAULT_TENANT else tenant

        async def one(index: int, text: str) -> bool:
            task_id = lifecycle.task_id_for(level, index)
            task = TaskAssign(
                job_id=job_id, task_id=task_id, level=level, index=index, count=len(texts),
                text=text, max_chars=max_chars, priority=wire_priority, tenant=wire_tenant,
            )  # fmt: skip
            ack = await bus.publish(
                subject, task, msg_id=f"{job_id}:{task_id}", stream=subjects.TASKS_STREAM
            )
            return not ack.duplicate

        if len(texts) == 1:
            return int(await one(0, texts[0]))
        new = 0
        for start in range(0, len(texts), _PUBLISH_BATCH):
            batch = texts[start : start + _PUBLISH_BATCH]
            new += sum(await asyncio.gather(*(one(start + i, t) for i, t in enumerate(batch))))
        return new

    # --- outcomes ------------------------------------------------------------------------

    async def complete(self, state: JobState, summary: str) -> None:
        """Write the final summary of a complete level (inline, or by reference above the
        inline limit)."""
        data = summary.encode()
        ref = None
        if len(data) > self.settings.limits.inline_limit_bytes:
            ref = await self._store_summary(state.job_id, summary)
        level = state.level
        written, _ = await self.store.transition(
            state.job_id,
            lambda s: lifecycle.complete(
                s, level=level, summary=summary, summary_ref=ref, now=_utcnow()
            ),
        )
        if written is not None:
            await self._on_completed(written, levels=level + 1)

    async def end_timer(self, state: JobState) -> None:
        """Ack the job's message, pending as its timer since intake: a finished job needs
        no more deadline checks, and the JOBS consumer's pending count stays the number of
        running jobs. The ack is confirmed (and retried in the background): one lost in a
        leader election would otherwise keep an ended job pending until its next check,
        up to the no-progress timeout later. The server takes the ack of any delivery of
        the message, so the intake's reply subject serves after rechecks too."""
        if state.timer:
            acker = asyncio.create_task(self._ack_timer(state.timer))
            self._ackers.add(acker)
            acker.add_done_callback(self._ackers.discard)

    async def _ack_timer(self, reply: str) -> None:
        for attempt in range(_TIMER_ACK_TRIES):
            try:
                await self.bus.nc.request(reply, b"+ACK", timeout=_TIMER_ACK_TIMEOUT_S)
                return
            except (nats.errors.Error, TimeoutError):
                # no responders (no consumer leader yet), a timeout, a reconnect
                await asyncio.sleep(min(0.5 * 2**attempt, _TIMER_ACK_MAX_BACKOFF_S))
        log.warning("job timer ack not confirmed after %d tries: %s", _TIMER_ACK_TRIES, reply)

    async def _on_completed(self, done: JobState, *, levels: int) -> None:
        await self.end_timer(done)
        seconds = max((done.updated_at - done.created_at).total_seconds(), 0.0)
        summary_chars = len(done.summary) if done.summary is not None else 0
        metrics.JOBS_COMPLETED.labels(self.service).inc()
        metrics.JOB_SECONDS.labels(self.service).observe(seconds)
        # the event and the final item travel side by side (no task of their own)
        emitted = self.bus.emit_soon(
            EventKind.JOB_COMPLETED,
            job_id=done.job_id,
            event_id=f"{done.job_id}-completed",
            data={
                "summary_chars": summary_chars,
                "levels": levels,
                "seconds": seconds,
                "usage": done.usage.model_dump() if done.usage is not None else None,
            },
        )
        await self.bus.progress(progress.final_item(done))
        await emitted
        if done.chunks > 1 or done.level > 0:
            await self.drop_parts(done.job_id)
        log.debug("job completed in %.3fs", seconds)

    async def drop_parts(self, job_id: str) -> None:
        kv = await self.bus.kv(subjects.JOB_PARTS_BUCKET)
        try:
            # `{job_id}.{level}.{index}` exactly: job `a`'s parts, not tenant a's `a.x.0.1`
            keys = await kv.keys(filters=[f"{job_id}.*.*"])
        except (nats.js.errors.NoKeysError, AgentBusError):
            keys = []
        for start in range(0, len(keys), _PARTS_READ_BATCH):
            batch = keys[start : start + _PARTS_READ_BATCH]
            outcomes = await asyncio.gather(*(kv.purge(k) for k in batch), return_exceptions=True)
            for key, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.debug("could not purge part %s: %s", key, outcome)

    async def fail(self, job_id: str, reason: str, *, category: str) -> bool:
        """Fail a job that is not finished; True when this call failed it."""
        written, _ = await self.store.transition(
            job_id,
            lambda s: lifecycle.fail(s, reason=reason, failed_by=category, now=_utcnow()),
        )
        if written is None:
            return False
        await self.job_failed(job_id, reason, category=category)
        await self.end_timer(written)
        return True

    async def job_failed(self, job_id: str, reason: str, *, category: str) -> None:
        metrics.JOBS_FAILED.labels(self.service, category).inc()
        await self.bus.progress(
            StreamItem(job_id=job_id, kind=StreamKind.FAILED, error=reason[:1000])
        )
        await self.bus.emit(
            EventKind.JOB_FAILED,
            job_id=job_id,
            event_id=f"{job_id}-failed",
            data={"reason": reason[:1000]},
        )
        log.warning("job %s failed: %s", job_id, reason)

    async def emit_state(self, state: JobState) -> None:
        """Emit the event of the job's current step again; its id makes this a no-op when
        the event is already in the stream (within the stream's duplicate window)."""
        if state.status.terminal:  # the final item too, should a crash have lost it
            await self.bus.progress(progress.final_item(state))
        if state.status is JobStatus.COMPLETED:
            await self.bus.emit(
                EventKind.JOB_COMPLETED,
                job_id=state.job_id,
                event_id=f"{state.job_id}-completed",
                data={"summary_chars": len(state.summary or ""), "levels": state.level + 1},
            )
        elif state.status is JobStatus.CANCELED:
            await self.bus.emit(
                EventKind.JOB_CANCELED,
                job_id=state.job_id,
                event_id=f"{state.job_id}-canceled",
                data={"reason": state.error or ""},
            )
        elif state.status is JobStatus.FAILED:
            await self.bus.emit(
                EventKind.JOB_FAILED,
                job_id=state.job_id,
                event_id=f"{state.job_id}-failed",
                data={"reason": (state.error or "")[:1000]},
            )
        elif state.level > 0:
            await self.bus.emit(
                EventKind.JOB_REDUCING,
                job_id=state.job_id,
                event_id=f"{state.job_id}-reduce-{state.level}",
                data={"level": state.level, "tasks": state.level_tasks},
            )

    async def close(self) -> None:
        if self._ackers:  # confirmations on their way: a moment, not the retries
            await asyncio.wait(list(self._ackers), timeout=_TIMER_ACK_TIMEOUT_S)
        for writer in [*self._writers, *self._ackers]:
            writer.cancel()
        await asyncio.gather(*self._writers, *self._ackers, return_exceptions=True)
