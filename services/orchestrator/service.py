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
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from agentbus import metrics, subjects, telemetry
from agentbus.bus import (
    DLQ_HEADER_DELIVERIES,
    DLQ_HEADER_MSG_ID,
    DLQ_HEADER_REASON,
    DLQ_HEADER_SEQ,
    DLQ_HEADER_STREAM,
    DLQ_HEADER_SUBJECT,
    MSG_ID_HEADER,
    Bus,
    ConsumerLoop,
    delivery_count,
)
from agentbus.chunking import chunk_text, pack
from agentbus.dlq import is_replay
from agentbus.documents import check_document, fetch_document, store_document
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
_MAX_DELIVERIES_ADVISORY: Final = (
    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.TASKS_STREAM}.*"
)
_CAS_RETRIES: Final = 50
_AHEAD_RETRY_S: Final = 0.2


_KNOWN_STATES_MAX: Final = 10_000


def _records(state: JobState, r: TaskResult) -> bool:
    """`r` is a success that `state` has not recorded yet, of the level it is at."""
    return (
        not state.status.terminal
        and r.ok
        and r.level == state.level
        and r.index < state.level_tasks
        and r.index not in state.level_done
    )


class ResultAhead(OrchestratorError):
    """A result of a level the job state has not moved to yet."""


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
        # The last state (and revision) this replica read or wrote of each running job.
        # It only ever saves the read before a compare-and-set write: a stale entry (another
        # replica moved the job on) fails the write, which then reads the job afresh.
        self._known: OrderedDict[str, tuple[JobState, int]] = OrderedDict()

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        self._jobs = await bus.kv(subjects.JOBS_BUCKET)
        self._parts = await bus.kv(subjects.JOB_PARTS_BUCKET)
        metrics.init_orchestrator(bus.service)
        await bus.nc.subscribe(
            _MAX_DELIVERIES_ADVISORY,
            queue=subjects.ORCHESTRATOR_CONSUMER,  # one replica handles each advisory
            cb=self._on_max_deliveries,
        )
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
            entry = None
        if entry is None or entry.value is None:
            self._known.pop(job_id, None)
            return None
        loaded = decode_job_state(entry.value), entry.revision or 0
        self._remember(job_id, loaded)
        return loaded

    def _remember(self, job_id: str, loaded: tuple[JobState, int]) -> None:
        if loaded[0].status.terminal:
            self._known.pop(job_id, None)
            return
        self._known[job_id] = loaded
        self._known.move_to_end(job_id)
        while len(self._known) > _KNOWN_STATES_MAX:
            self._known.popitem(last=False)

    async def _update(
        self,
        job_id: str,
        change: Callable[[JobState], JobState | None],
        *,
        loaded: tuple[JobState, int] | None = None,
    ) -> JobState | None:
        """Compare-and-set loop: `change` returns the new state, or None for no change.

        `loaded` (a state and its revision read just before) saves the first read; a stale
        one only costs a retry. Returns the state written, or None when `change` declined."""
        bus = self.bus
        assert bus is not None
        for _ in range(_CAS_RETRIES):
            if loaded is None:
                loaded = await self._load(job_id)
            if loaded is None:
                raise OrchestratorError(
                    f"job {job_id}: no state in KV bucket {subjects.JOBS_BUCKET}"
                )
            state, revision = loaded
            # its one mutable field copied: cheaper than a deep copy, same isolation
            new = change(state.model_copy(update={"level_done": list(state.level_done)}))
            if new is None:
                return None
            new.updated_at = utcnow()
            try:
                written = await bus.kv_update(
                    subjects.JOBS_BUCKET, job_id, new.model_dump_json().encode(), last=revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                loaded = None
                await asyncio.sleep(0)
                continue
            self._remember(job_id, (new, written))
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
            log_context(job_id=job.job_id, trace_id=telemetry.trace_id_of(msg.headers)),
            telemetry.span(
                "orchestrator job",
                headers=msg.headers,
                kind="consumer",
                attributes={"agentbus.job_id": job.job_id},
            ),
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
            data = await fetch_document(
                self.bus.js, job.document, max_bytes=self.settings.limits.max_document_bytes
            )
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
        # On a first delivery the state almost never exists: create it straight away and
        # read it only when the create finds one (saves a round trip per job).
        first = delivery_count(msg) == 1 and not is_replay(msg.headers)
        loaded = None if first else await self._load(job.job_id)
        # a replayed dead letter (`agentbus dlq replay`) of a job that failed at intake
        # is taken in again from the start
        reopen = (
            loaded is not None
            and is_replay(msg.headers)
            and loaded[0].status is JobStatus.FAILED
            and loaded[0].level == 0
            and not loaded[0].level_done
        )
        if loaded is not None and not reopen and self._moved_on(loaded[0]):
            if delivery_count(msg) > 1 and loaded[0].chunks:
                for stored in self._emit_intake(loaded[0]):  # the last try may have died
                    await stored  # before they were stored
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
        if loaded is None or reopen:
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
                trace_id=telemetry.current_trace_id() or telemetry.trace_id_of(msg.headers),
            )
            if reopen:
                await self._update(
                    job.job_id, lambda s: state if s.status is JobStatus.FAILED else None
                )
            else:
                try:
                    created = await bus.kv_create(
                        subjects.JOBS_BUCKET, job.job_id, state.model_dump_json().encode()
                    )
                    self._remember(job.job_id, (state, created))
                    metrics.JOBS_SUBMITTED.labels(self.name).inc()
                except nats.js.errors.KeyWrongLastSequenceError:
                    # another replica (or a re-submission of the same id) created it
                    existing = await self._load(job.job_id)
                    if existing is not None and self._moved_on(existing[0]):
                        await msg.ack()
                        return
        intake = JobState(
            job_id=job.job_id, status=JobStatus.RUNNING, title=job.title,
            document_chars=len(text), summary_chars=summary_chars, chunks=len(chunks),
        )  # fmt: skip
        per_task = summary_chars if len(chunks) == 1 else self.cfg.chunk_summary_chars
        # the events go out alongside the tasks (the emitter batches them with other
        # jobs' events); the job is acked once all of them are stored
        events = self._emit_intake(intake)
        await self._publish_level(job.job_id, job.skill, 0, chunks, per_task)
        for stored in events:
            await stored
        # no need to wait for the server's confirmation: a job redelivered because this
        # ack was lost finds its state and re-sends only duplicates, which are dropped
        await msg.ack()
        log.debug("job accepted: %d chars in %d chunk(s)", len(text), len(chunks))

    @staticmethod
    def _moved_on(state: JobState) -> bool:
        """Past intake: finished, or its map step already recorded as launched."""
        return state.status.terminal or state.level > 0

    def _emit_intake(self, state: JobState) -> tuple[asyncio.Future[None], ...]:
        """The intake events (accepted, then chunked), with ids derived from the job id
        (so emitting them twice records them once); each future completes once its event
        is stored."""
        assert self.bus is not None
        accepted = self.bus.emit_soon(
            EventKind.JOB_ACCEPTED,
            job_id=state.job_id,
            event_id=f"{state.job_id}-accepted",
            data={
                "title": state.title,
                "chars": state.document_chars,
                "summary_chars": state.summary_chars,
            },
        )
        chunked = self.bus.emit_soon(
            EventKind.JOB_CHUNKED,
            job_id=state.job_id,
            event_id=f"{state.job_id}-chunked",
            data={"chunks": state.chunks, "chunk_chars": self.cfg.chunk_chars},
        )
        return accepted, chunked

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

        if len(texts) == 1:
            await one(0, texts[0])
            return
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
            log_context(
                job_id=r.job_id, task_id=r.task_id, trace_id=telemetry.trace_id_of(msg.headers)
            ),
            telemetry.span(
                "orchestrator result",
                headers=msg.headers,
                kind="consumer",
                attributes={"agentbus.job_id": r.job_id, "agentbus.task_id": r.task_id},
            ),
        ):
            try:
                await self._collect(r, redelivered=delivery_count(msg) > 1)
            except ResultAhead as e:
                log.debug("result retried shortly: %s", e)
                await msg.nak(delay=_AHEAD_RETRY_S)
                return
            except OrchestratorError as e:
                log.warning("result dropped: %s", e)
                await bus.dead_letter(
                    msg, reason=f"result rejected: {e}", stream=subjects.RESULTS_STREAM
                )
                return
            await msg.ack()

    async def _collect(self, r: TaskResult, *, redelivered: bool = False) -> None:
        """Record one result. A failed job keeps recording the successes of its tasks, so
        that when a dead-lettered task is replayed (`agentbus dlq replay`) and succeeds,
        the job goes on from where it stopped (failed -> reducing/completed)."""
        known = None if redelivered else self._known.get(r.job_id)
        # the state this replica last wrote saves a read when the result is a plain next
        # step (its write checks the revision); anything else is decided on a fresh read
        loaded = known if known is not None and _records(known[0], r) else None
        loaded = loaded or await self._load(r.job_id)
        if loaded is None:
            raise OrchestratorError(f"result for unknown job {r.job_id}")
        state = loaded[0]
        if redelivered:
            await self._emit_state(state)  # the last try may have died before its event
        if state.status is JobStatus.COMPLETED or r.level < state.level:
            return  # late duplicate
        if r.level > state.level:
            # The next level's tasks are published before the state moves to it, so a fast
            # worker's result can arrive first: it is retried shortly, never dropped.
            raise ResultAhead(f"result of level {r.level} ahead of job level {state.level}")
        if r.index >= state.level_tasks:
            raise OrchestratorError(
                f"result index {r.index} out of range: level {r.level} has "
                f"{state.level_tasks} tasks"
            )
        if not r.ok:
            # the failure of a task whose success is recorded changes nothing, and a
            # failed job keeps its first reason
            if state.status is not JobStatus.FAILED and r.index not in state.level_done:
                await self._fail(r)
            return
        if state.level_tasks == 1:
            # A single-task level (a one-chunk job, or the last reduce step): its result is
            # the final summary, so the job completes straight from it (one state update,
            # no part stored and read back). A redelivery after that update finds the job
            # completed above and only re-emits its event.
            await self._complete(state, r.summary, result=r, loaded=loaded)
            return
        assert self._parts is not None
        await self._parts.put(_part_key(r.job_id, r.level, r.index), r.summary.encode())

        def record(s: JobState) -> JobState | None:
            if s.status is JobStatus.COMPLETED or s.level != r.level or r.index in s.level_done:
                return None
            s.level_done.append(r.index)
            s.level_done.sort()
            s.tasks_done_total += 1
            return s

        new = await self._update(r.job_id, record, loaded=loaded)
        current = new or (await self._load(r.job_id) or (state, 0))[0]
        if (
            current.status is not JobStatus.COMPLETED
            and current.level == r.level
            and len(current.level_done) >= current.level_tasks
        ):
            await self._advance(current)

    async def _emit_state(self, state: JobState) -> None:
        """Emit the event of the job's current step again; its id makes this a no-op when
        the event is already in the stream (within the stream's duplicate window)."""
        assert self.bus is not None
        if state.status is JobStatus.COMPLETED:
            await self.bus.emit(
                EventKind.JOB_COMPLETED,
                job_id=state.job_id,
                event_id=f"{state.job_id}-completed",
                data={"summary_chars": len(state.summary or ""), "levels": state.level + 1},
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
        with telemetry.span(
            "orchestrator reduce",
            attributes={"agentbus.job_id": state.job_id, "agentbus.level": level + 1},
        ):
            await self._publish_level(state.job_id, state.skill, level + 1, groups, per_task)

        def next_level(s: JobState) -> JobState | None:
            if s.status is JobStatus.COMPLETED or s.level != level:
                return None
            s.status = JobStatus.REDUCING
            s.error = None  # a failed job whose replayed task succeeded goes on
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

    async def _complete(
        self,
        state: JobState,
        summary: str,
        *,
        result: TaskResult | None = None,
        loaded: tuple[JobState, int] | None = None,
    ) -> None:
        """Write the final summary; `result` is the single task of the last level whose
        summary this is (recorded as done in the same update)."""
        assert self.bus is not None
        data = summary.encode()
        # a final summary above the inline limit travels by reference (object store)
        ref = None
        if len(data) > self.settings.limits.inline_limit_bytes:
            name = f"{state.job_id}.summary.txt"
            ref = await store_document(self.bus.js, name=name, data=data)

        def complete(s: JobState) -> JobState | None:
            if s.status is JobStatus.COMPLETED or s.level != state.level:
                return None
            if result is not None and result.index not in s.level_done:
                s.level_done.append(result.index)
                s.level_done.sort()
                s.tasks_done_total += 1
            s.status = JobStatus.COMPLETED
            s.summary, s.summary_ref = (None, ref) if ref is not None else (summary, None)
            s.error = None  # a failed job whose replayed task succeeded is done
            return s

        done = await self._update(state.job_id, complete, loaded=loaded)
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
        log.debug("job completed in %.3fs (%d chars)", seconds, len(summary))

    async def _drop_parts(self, state: JobState) -> None:
        assert self._parts is not None
        if state.chunks <= 1 and state.level == 0:
            return  # a one-chunk job completes from its result: no part was stored
        try:
            keys = await self._parts.keys(filters=[f"{state.job_id}.>"])
        except (nats.js.errors.NoKeysError, AgentBusError):
            keys = []
        for key in keys:
            try:
                await self._parts.purge(key)
            except nats.js.errors.Error as e:
                log.debug("could not purge part %s: %s", key, e)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """Safety net for a task that JetStream stopped delivering while no worker
        dead-lettered it (the worker of its last delivery died before it could, or workers
        run with a larger max_deliver than the consumer was provisioned with): file it on
        the DLQ, take it off TASKS and fail its job with the reason."""
        bus = self.bus
        assert bus is not None
        try:
            advisory = json.loads(msg.data)
            stream, seq = str(advisory["stream"]), int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("unreadable advisory on %s: %s", msg.subject, e)
            return
        try:
            raw = await bus.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return  # acked or dead-lettered meanwhile
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("max deliveries of %s seq %d: cannot read it: %s", stream, seq, e)
            return
        reason = (
            f"delivered {deliveries} time(s) without an outcome "
            f"(max deliveries of consumer {advisory.get('consumer', '?')} reached)"
        )
        headers = {k: v for k, v in (raw.headers or {}).items() if k != MSG_ID_HEADER}
        headers |= {
            DLQ_HEADER_REASON: reason,
            DLQ_HEADER_STREAM: stream,
            DLQ_HEADER_SUBJECT: raw.subject or "",
            DLQ_HEADER_SEQ: str(seq),
            DLQ_HEADER_DELIVERIES: str(deliveries),
        }
        if raw.headers and raw.headers.get(MSG_ID_HEADER):
            headers[DLQ_HEADER_MSG_ID] = raw.headers[MSG_ID_HEADER]
        try:
            # same id as a worker's dead letter of this message: never filed twice
            await bus.publish_raw(
                subjects.dlq_subject(stream), raw.data or b"", msg_id=f"dlq-{stream}-{seq}",
                stream=subjects.DLQ_STREAM, headers=headers,
            )  # fmt: skip
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await bus.js.delete_msg(stream, seq)
            task = decode(raw.data or b"", TaskAssign).payload
            log.warning("dead-lettered %s seq %d (advisory): %s", stream, seq, reason)
            await bus.emit(
                EventKind.TASK_DEAD_LETTERED,
                job_id=task.job_id,
                task_id=task.task_id,
                data={"reason": reason, "via": "max-deliveries advisory"},
            )
            await self._fail(
                TaskResult(
                    job_id=task.job_id, task_id=task.task_id, level=task.level,
                    index=task.index, ok=False, error=reason, worker_id=bus.agent_id,
                    duration_ms=0,
                )
            )  # fmt: skip
        except (AgentBusError, nats.errors.Error, TimeoutError) as e:
            log.warning("max deliveries of %s seq %d not handled: %s", stream, seq, e)

    async def _fail(self, r: TaskResult) -> None:
        reason = r.error or "task failed"

        def fail(s: JobState) -> JobState | None:
            if s.status.terminal or (s.level == r.level and r.index in s.level_done):
                return None
            s.status = JobStatus.FAILED
            s.error = f"task {r.task_id}: {reason}"
            return s

        if await self._update(r.job_id, fail) is not None:
            await self._job_failed(r.job_id, reason, category="task")

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
