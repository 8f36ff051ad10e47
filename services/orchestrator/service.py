"""The orchestrator: job intake, chunking, fan-out, result collection, reduce, job state.

All job state lives in JetStream (the jobs KV bucket; the task summaries of a level in the
job-parts bucket), changed only through the pure transitions of `orchestrator.lifecycle`
written with compare-and-set (`orchestrator.state.JobStore`), so any number of replicas
can share the work and a replica restarted mid-job picks up where the last one stopped:

- a job message is acked only after its state is recorded, every task is published and
  its deadline timer is set (task publishes carry `{job_id}:{task_id}` as `Nats-Msg-Id`,
  so a redelivery re-sends nothing new);
- a result is acked only after it is recorded (results of one job are batched into one
  write per replica: `orchestrator.collect`); the write that completes a level starts the
  next level (publish first, then move the state, so a crash in between is repaired by the
  redelivered result);
- a job that stops moving is failed with the reason by its deadline timer
  (`jobs.deadline.{job_id}`), never left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import ClassVar, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

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
from agentbus.chunking import chunk_text
from agentbus.dlq import is_replay
from agentbus.documents import check_document, fetch_document
from agentbus.errors import AgentBusError, DocumentRejected, MessageDecodeError
from agentbus.logs import log_context
from agentbus.messages import (
    EventKind,
    JobDeadline,
    JobState,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
    decode,
    utcnow,
)
from agentbus.service import AgentService
from agentbus.settings import Settings
from orchestrator import lifecycle
from orchestrator.collect import Collector
from orchestrator.lifecycle import Outcome, task_id_for
from orchestrator.state import JobStore, StateConflict, UnknownJob

__all__ = ["Orchestrator", "task_id_for"]

log = logging.getLogger("orchestrator")

_MAX_DELIVERIES_ADVISORY: Final = (
    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.TASKS_STREAM}.*"
)
_AHEAD_RETRY_S: Final = 0.2
_CONFLICT_RETRY_S: Final = 1.0
_DEADLINE_CONCURRENCY: Final = 64


@contextlib.asynccontextmanager
async def _in_progress(msg: Msg, *, every_s: float) -> AsyncIterator[None]:
    """`in_progress` on `msg` while the block runs. An intake whose publishes are retried
    through an outage (a full store, a leader election) keeps its job message: without
    it, ack_wait hands the job to another intake every ack_wait, and max_deliver of those
    fail an accepted job within seconds of the outage's start."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


class Orchestrator(AgentService):
    name: ClassVar[str] = "orchestrator"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cfg = settings.orchestrator
        self._store: JobStore | None = None
        self._collector: Collector | None = None

    async def setup(self, bus: Bus) -> list[ConsumerLoop]:
        await bus.kv(subjects.JOBS_BUCKET)
        await bus.kv(subjects.JOB_PARTS_BUCKET)
        self._store = JobStore(bus)
        self._collector = Collector(bus, self._store, self.settings, service=self.name)
        metrics.init_orchestrator(bus.service)
        await bus.nc.subscribe(
            _MAX_DELIVERIES_ADVISORY,
            queue=subjects.ORCHESTRATOR_CONSUMER,  # one replica handles each advisory
            cb=self._on_max_deliveries,
        )
        return [
            ConsumerLoop(
                bus,
                stream=subjects.JOBS_STREAM,
                durable=subjects.ORCHESTRATOR_CONSUMER,
                handler=self.handle_job,
                concurrency=self.cfg.concurrency,
            ),
            ConsumerLoop(
                bus,
                stream=subjects.RESULTS_STREAM,
                durable=subjects.ORCHESTRATOR_RESULTS_CONSUMER,
                handler=self.handle_result,
                concurrency=self.cfg.concurrency,
            ),
            ConsumerLoop(
                bus,
                stream=subjects.JOBS_STREAM,
                durable=subjects.ORCHESTRATOR_DEADLINES_CONSUMER,
                handler=self.handle_deadline,
                concurrency=_DEADLINE_CONCURRENCY,
            ),
        ]

    async def teardown(self) -> None:
        if self._collector is not None:
            await self._collector.close()

    @property
    def store(self) -> JobStore:
        assert self._store is not None
        return self._store

    @property
    def collector(self) -> Collector:
        assert self._collector is not None
        return self._collector

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
                # the job's error carries the dead letter's reason, as every failure does
                reason = f"job intake over max_deliver ({delivery_count(msg)} deliveries)"
                await bus.dead_letter(msg, reason=reason, stream=subjects.JOBS_STREAM)
                await self._fail_new(job, reason, category="intake")
                return
            async with _in_progress(msg, every_s=self.settings.topology.ack_wait_s / 3):
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

    def _sha256_of(self, job: JobSubmit) -> str | None:
        return job.document_sha256 or (job.document.sha256 if job.document else None)

    async def _fail_new(self, job: JobSubmit, reason: str, *, category: str) -> None:
        """Record a job that could not even start as failed (creating its state if needed)."""
        state = JobState(
            job_id=job.job_id, status=JobStatus.FAILED, title=job.title, error=reason,
            failed_by=category, document_sha256=self._sha256_of(job),
        )  # fmt: skip
        if await self.store.create(state) is None:
            await self.collector.fail(job.job_id, reason, category=category)
            return
        await self.collector.job_failed(job.job_id, reason, category=category)

    async def _other_document(self, msg: Msg, job: JobSubmit, existing: JobState) -> bool:
        """A job id taken by another document: the submission is dead-lettered with the
        reason (the client refuses it up front; this catches two racing submissions)."""
        assert self.bus is not None
        sha = self._sha256_of(job)
        if sha is None or existing.document_sha256 is None or sha == existing.document_sha256:
            return False
        await self.bus.dead_letter(
            msg,
            reason=f"job {job.job_id} exists with a different document: submit it under "
            "a new job id",
            stream=subjects.JOBS_STREAM,
        )
        return True

    async def _intake(self, msg: Msg, job: JobSubmit) -> None:
        bus = self.bus
        assert bus is not None
        # On a first delivery the state almost never exists: create it straight away and
        # read it only when the create finds one (saves a round trip per job).
        first = delivery_count(msg) == 1 and not is_replay(msg.headers)
        loaded = None if first else await self.store.load(job.job_id)
        # a replayed dead letter (`agentbus dlq replay`) of a job that failed at intake
        # is taken in again from the start
        reopen = (
            loaded is not None
            and is_replay(msg.headers)
            and loaded[0].status is JobStatus.FAILED
            and loaded[0].failed_by in (None, "intake", "rejected")
            and loaded[0].level == 0
            and loaded[0].level_done == 0
        )
        if loaded is not None and not reopen:
            if await self._other_document(msg, job, loaded[0]):
                return
            if self._moved_on(loaded[0]):
                if delivery_count(msg) > 1 and loaded[0].chunks:
                    for stored in self._emit_intake(loaded[0]):  # the last try may have
                        await stored  # died before they were stored
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
        document_chars = len(text)
        del text  # a large document is held once, as its chunks
        state = lifecycle.intake(
            job_id=job.job_id, title=job.title, skill=job.skill,
            document_chars=document_chars, summary_chars=summary_chars, chunks=len(chunks),
            now=utcnow(), timeout_s=job.timeout_s, document_sha256=self._sha256_of(job),
            trace_id=telemetry.current_trace_id() or telemetry.trace_id_of(msg.headers),
        )  # fmt: skip
        if reopen:
            await self.store.transition(
                job.job_id, lambda s: state if s.status is JobStatus.FAILED else None
            )
        elif loaded is None:
            if await self.store.create(state) is not None:
                metrics.JOBS_SUBMITTED.labels(self.name).inc()
            else:
                # another replica (or a re-submission of the same id) created it
                existing = await self.store.load(job.job_id)
                if existing is not None and await self._other_document(msg, job, existing[0]):
                    return
                if existing is not None and self._moved_on(existing[0]):
                    await msg.ack()
                    return
        per_task = summary_chars if len(chunks) == 1 else self.cfg.chunk_summary_chars
        # the events go out alongside the tasks and the timer (the emitter batches them
        # with other jobs' events); the job is acked once all of them are stored
        events = self._emit_intake(state)
        verdict = lifecycle.check_deadline(
            state,
            now=state.created_at,
            job_timeout_s=self.cfg.job_timeout_s,
            no_progress_timeout_s=self.cfg.no_progress_timeout_s,
        )
        timer = bus.publish(
            subjects.job_deadline(job.job_id),
            JobDeadline(job_id=job.job_id, first_check_s=verdict.recheck_s or 0.0),
            msg_id=f"{job.job_id}:deadline",
            stream=subjects.JOBS_STREAM,
        )
        await asyncio.gather(
            timer, self.collector.publish_level(job.job_id, job.skill, 0, chunks, per_task)
        )
        for stored in events:
            await stored
        # no need to wait for the server's confirmation: a job redelivered because this
        # ack was lost finds its state and re-sends only duplicates, which are dropped
        await msg.ack()
        log.debug("job accepted: %d chars in %d chunk(s)", document_chars, len(chunks))

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

    # --- collection ----------------------------------------------------------------------

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
            if delivery_count(msg) > 1:
                # the last try may have died after its write, before its event
                loaded = await self.store.load(r.job_id)
                if loaded is not None:
                    await self.collector.emit_state(loaded[0])
            try:
                outcome = await self.collector.collect(r)
            except StateConflict as e:
                log.info("result retried later: %s", e)
                await msg.nak(delay=_CONFLICT_RETRY_S)
                return
            except UnknownJob as e:
                await bus.dead_letter(
                    msg, reason=f"result rejected: {e}", stream=subjects.RESULTS_STREAM
                )
                return
            if outcome is Outcome.AHEAD:
                # The next level's tasks are published before the state moves to it, so a
                # fast worker's result can arrive first: it is retried shortly, never dropped.
                await msg.nak(delay=_AHEAD_RETRY_S)
                return
            if outcome is Outcome.INVALID:
                await bus.dead_letter(
                    msg,
                    reason=f"result rejected: task {r.task_id} is not a task of job "
                    f"{r.job_id} at level {r.level}",
                    stream=subjects.RESULTS_STREAM,
                )
                return
            await msg.ack()

    # --- deadlines -----------------------------------------------------------------------

    async def handle_deadline(self, msg: Msg) -> None:
        """A job's timer: fail the job past its deadline or idle too long, else check it
        again later (nak with the delay); finished or unknown jobs end their timer."""
        bus = self.bus
        assert bus is not None
        try:
            timer = decode(msg.data, JobDeadline).payload
        except MessageDecodeError as e:
            await bus.reject(msg, reason=f"undecodable timer: {e}", stream=subjects.JOBS_STREAM)
            return
        job_id, cfg = timer.job_id, self.cfg
        if delivery_count(msg) == 1 and timer.first_check_s > 0:
            # delivered as soon as it is published: nothing can be due before its first
            # check (0: the job has no deadline at all, and its timer ends now)
            await msg.nak(delay=max(timer.first_check_s, lifecycle.MIN_RECHECK_S))
            return
        loaded = await self.store.load(job_id)
        if loaded is None:
            await msg.ack()
            return
        verdict = lifecycle.check_deadline(
            loaded[0],
            now=utcnow(),
            job_timeout_s=cfg.job_timeout_s,
            no_progress_timeout_s=cfg.no_progress_timeout_s,
        )
        if verdict.reason is not None:
            with log_context(job_id=job_id):
                await self.collector.fail(
                    job_id, verdict.reason, category=lifecycle.TIMEOUT_FAILURE
                )
            await msg.ack()
        elif verdict.recheck_s is not None:
            await msg.nak(delay=verdict.recheck_s)
        else:
            await msg.ack()

    # --- the max-deliveries safety net ---------------------------------------------------
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
            await self.collector.record(
                [
                    TaskResult(
                        job_id=task.job_id, task_id=task.task_id, level=task.level,
                        index=task.index, ok=False, error=reason, worker_id=bus.agent_id,
                        duration_ms=0,
                    )
                ]
            )  # fmt: skip
        except (AgentBusError, nats.errors.Error, TimeoutError) as e:
            log.warning("max deliveries of %s seq %d not handled: %s", stream, seq, e)
