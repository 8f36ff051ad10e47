"""Job intake: a job message is admitted (its tenant's rate and budget), its document read
and chunked, its state created and its map tasks published; then the message is kept as
the job's timer (`agentbus_orchestrator.deadlines`).

- a job message is settled only after its state is recorded and every task is published
  (task publishes carry `{job_id}:{task_id}` as `Nats-Msg-Id`, so a redelivery re-sends
  nothing new), and the state records them as published (skipped for a job of one
  chunk);
- when the message comes back (or a replayed dead letter of it comes), it is the timer
  if the job is past intake (`lifecycle.is_timer`); if the state still says
  `publishing`, the intake may have died on the way and is redone (a task published
  again within the stream's duplicate window is dropped; an event emitted again keeps
  its id, the archive's key), recorded, and the deadline checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Final

from nats.aio.msg import Msg

from agentbus.bus.core import Bus, storage_full
from agentbus.bus.deadletters import is_replay
from agentbus.bus.documents import check_document, fetch_document
from agentbus.bus.headers import delivery_count
from agentbus.contract import subjects
from agentbus.contract.chunking import chunk_text
from agentbus.contract.errors import DocumentRejected
from agentbus.contract.messages import (
    EventKind,
    JobState,
    JobStatus,
    JobSubmit,
    StreamItem,
    StreamKind,
    utcnow,
)
from agentbus.contract.priority import Priority
from agentbus.contract.settings import Settings
from agentbus.contract.tenants import DEFAULT_TENANT, job_tenant
from agentbus.observability import metrics, telemetry
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.admission import Admission, not_before_s
from agentbus_orchestrator.collect import Collector
from agentbus_orchestrator.deadlines import JobTimer
from agentbus_orchestrator.state import JobStore, StateConflict

log = logging.getLogger("orchestrator")

_FULL_RETRY_FIRST_S: Final = 0.5
_FULL_RETRY_MAX_S: Final = 5.0


@contextlib.asynccontextmanager
async def in_progress(msg: Msg, *, every_s: float) -> AsyncIterator[None]:
    """`in_progress` on `msg` while the block runs. An intake whose publishes are retried
    through an outage (a full store, a leader election) keeps its job message: without
    it, ack_wait hands the job to another intake every ack_wait, and max_deliver of those
    fail an accepted job within seconds of the outage's start. A timer, not a task: most
    intakes end long before the first beat, and this is on every job's path."""
    loop = asyncio.get_running_loop()
    beats: set[asyncio.Task[None]] = set()

    handles: list[asyncio.TimerHandle] = []

    def beat() -> None:
        task = loop.create_task(msg.in_progress())
        beats.add(task)
        task.add_done_callback(beats.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # best effort
        handles[:] = [loop.call_later(every_s, beat)]

    handles.append(loop.call_later(every_s, beat))
    try:
        yield
    finally:
        for handle in handles:
            handle.cancel()
        for task in beats:
            task.cancel()


class Intake:
    """Takes job messages in for one orchestrator (any number of replicas share the work:
    every step is a compare-and-set write or a deduplicated publish)."""

    def __init__(
        self,
        bus: Bus,
        settings: Settings,
        *,
        store: JobStore,
        collector: Collector,
        admission: Admission,
        timer: JobTimer,
        service: str,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.cfg = settings.orchestrator
        self.store = store
        self.collector = collector
        self.admission = admission
        self.timer = timer
        self.service = service

    async def take(self, msg: Msg, job: JobSubmit) -> None:
        """Take in a job message: hold it back while its tenant is over its rate, redo an
        intake that died, check the deadline if it is the job's timer, else take the job in."""
        held_s = not_before_s(msg) - time.time()
        if held_s > 0:  # held back by its tenant's rate or budget: not yet
            await msg.nak(delay=held_s)
            return
        loaded = None
        replay = is_replay(msg.headers)
        if delivery_count(msg) > 1 or replay:
            loaded = await self.store.load(job.job_id)
            if loaded is not None and replay and await self._other_document(msg, job, loaded[0]):
                return
            if loaded is not None and lifecycle.is_timer(loaded[0], replay=replay):
                await self.timer.check(msg, job, loaded[0])
                return
            if loaded is not None and not (replay and lifecycle.reopenable(loaded[0])):
                async with in_progress(msg, every_s=self.settings.topology.ack_wait_s / 3):
                    await self._redo_intake(msg, job, loaded[0])
                return
        tenant = self._tenant_of(msg, job)
        limited = loaded is None and self.admission.limited(tenant)
        if limited and not await self._admitted(msg, job, tenant):
            return
        if delivery_count(msg) > self.settings.topology.max_deliver:
            # the job's error carries the dead letter's reason, as every failure does
            reason = f"job intake over max_deliver ({delivery_count(msg)} deliveries)"
            await self.bus.dead_letter(msg, reason=reason, stream=subjects.JOBS_STREAM)
            await self._fail_new(job, reason, category="intake")
            return
        async with in_progress(msg, every_s=self.settings.topology.ack_wait_s / 3):
            await self._intake_until_stored(msg, job, loaded=loaded)

    async def _admitted(self, msg: Msg, job: JobSubmit, tenant: str) -> bool:
        """Within its tenant's job rate and token budget (counted across replicas): take
        the job in; else fail it with the reason, or hold it, per the tenant's setting."""
        verdict = await self.admission.verdict(tenant)
        if verdict.refused is not None:
            if await self.store.load(job.job_id) is not None:
                await msg.ack()  # a job submitted again under its id: that job, untouched
                return False
            category = "budget" if "budget" in verdict.outcome else "rate"
            log.info("job refused: %s", verdict.refused)
            await self._fail_new(job, verdict.refused, category=category, tenant=tenant)
            await msg.ack()
            return False
        if verdict.hold_s > 0:
            log.info("job held %.1f s (%s of tenant %s)", verdict.hold_s, verdict.outcome, tenant)
            await self.admission.hold(msg, job_id=job.job_id, hold_s=verdict.hold_s)
            return False
        return True

    async def _intake_until_stored(
        self, msg: Msg, job: JobSubmit, *, loaded: tuple[JobState, int] | None
    ) -> None:
        """`_intake`, waiting out a full JetStream store: the job was accepted (its message
        is stored), so a full store is an outage to outlast, not a reason to burn the job's
        deliveries. The job message is held (`in_progress`) meanwhile, and each try repeats
        only what is missing (the state is created once, publishes are deduplicated by
        id). Bounded by the no-progress timeout; past it the error takes the usual path."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                await self._intake(msg, job, loaded=loaded)
                return
            except Exception as e:
                waited_s = time.monotonic() - started
                if not storage_full(e) or waited_s > self.cfg.no_progress_timeout_s > 0:
                    raise
                if attempt == 0:
                    log.warning("job intake waits for JetStream storage: %s", e)
                delay_s = min(_FULL_RETRY_FIRST_S * 2**attempt, _FULL_RETRY_MAX_S)
                attempt += 1
                loaded = None
                await asyncio.sleep(random.uniform(delay_s / 2, delay_s))

    async def _document_text(self, job: JobSubmit) -> str:
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

    async def _fail_new(
        self, job: JobSubmit, reason: str, *, category: str, tenant: str = DEFAULT_TENANT
    ) -> None:
        """Record a job that could not even start as failed (creating its state if needed)."""
        state = JobState(
            job_id=job.job_id, status=JobStatus.FAILED, title=job.title, error=reason,
            failed_by=category, document_sha256=self._sha256_of(job), tenant=tenant,
        )  # fmt: skip
        if await self.store.create(state) is None:
            await self.collector.fail(job.job_id, reason, category=category)
            return
        await self.collector.job_failed(job.job_id, reason, category=category)

    async def _other_document(self, msg: Msg, job: JobSubmit, existing: JobState) -> bool:
        """A job id taken by another document: the submission is dead-lettered with the
        reason (the client refuses it up front; this catches two racing submissions)."""
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

    async def _intake(
        self, msg: Msg, job: JobSubmit, *, loaded: tuple[JobState, int] | None
    ) -> None:
        bus = self.bus
        # On a first delivery the state almost never exists: create it straight away and
        # read it only when the create finds one (saves a round trip per job).
        first = delivery_count(msg) == 1 and not is_replay(msg.headers)
        if not first and loaded is None:
            loaded = await self.store.load(job.job_id)
        # a replayed dead letter (`agentbus dlq replay`) of a job that failed at intake
        # is taken in again from the start
        reopen = loaded is not None and is_replay(msg.headers) and lifecycle.reopenable(loaded[0])
        if loaded is not None and not reopen:
            if await self._other_document(msg, job, loaded[0]):
                return
            if lifecycle.past_intake(loaded[0]):
                if delivery_count(msg) > 1 and loaded[0].chunks:
                    for stored in self._emit_intake(loaded[0]):  # the last try may have
                        await stored  # died before they were stored
                await self.timer.end_intake(msg, job, loaded[0])  # redelivered, moved on
                return
        try:
            text = await self._document_text(job)
        except DocumentRejected as e:
            existing = await self.store.load(job.job_id)
            if existing is not None and existing[0].status is JobStatus.CANCELED:
                await msg.ack()  # canceled before intake: its document is gone on purpose
                return
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
            timer=msg.reply or None, priority=job.priority or Priority.NORMAL,
            tenant=self._tenant_of(msg, job),
        )  # fmt: skip
        if reopen:
            await self.store.transition(
                job.job_id, lambda s: state if s.status is JobStatus.FAILED else None
            )
        elif loaded is None:
            if await self.store.create(state) is not None:
                metrics.JOBS_SUBMITTED.labels(self.service).inc()
            else:
                # another replica (or a re-submission of the same id) created it
                existing = await self.store.load(job.job_id)
                if existing is not None and await self._other_document(msg, job, existing[0]):
                    return
                if existing is not None and lifecycle.past_intake(existing[0]):
                    await msg.ack()
                    return
        per_task = self._per_task_chars(summary_chars, len(chunks))
        # The intake events are stored before any task exists (the emitter batches them
        # with other jobs' events): a job's record begins with them, and the job cannot
        # end - and ack its message, the timer - while they are still on their way.
        for stored in self._emit_intake(state):
            await stored
        await self.collector.publish_level(
            job.job_id, job.skill, 0, chunks, per_task, priority=state.priority,
            tenant=state.tenant,
        )  # fmt: skip
        if len(chunks) > 1 or not first:
            # (a job of one chunk skips the record: one write less per job on the hot path)
            state = await self._published(state)
        if first or reopen:
            await self.timer.end_intake(msg, job, state)
        else:  # an intake redone: this visit may as well be the job's first deadline check
            await self.timer.check(msg, job, state)
        log.debug("job accepted: %d chars in %d chunk(s)", document_chars, len(chunks))

    async def _redo_intake(self, msg: Msg, job: JobSubmit, state: JobState) -> None:
        """The message of a job whose state still says `publishing` came back: its intake
        may have died before publishing every task, or (a job of one chunk skips the
        record) this is the first deadline check of a job still running. Unless the job
        is past its deadline, its tasks are published again (a task published already,
        within the duplicate window, is dropped as a duplicate), its intake events
        emitted again only if some task was not (they were stored before any task was),
        and the tasks recorded as published; then the deadline is checked. Not counted
        against max_deliver (a timer's visits count as deliveries); a document that
        cannot be read now, or chunks differently, fails nothing: the job is recorded as
        it is and goes on to its deadline."""
        if await self._other_document(msg, job, state):
            return
        if self.timer.verdict(state).reason is None:
            try:
                text = await self._document_text(job)
            except DocumentRejected as e:
                log.warning("job %s: intake not redone: %s", job.job_id, e)
                text = None
            chunks = chunk_text(text, max_chars=self.cfg.chunk_chars) if text else []
            if len(chunks) != state.chunks:
                if chunks:
                    log.warning(
                        "job %s: intake not redone: %d chunk(s) now, %d at intake (was "
                        "orchestrator.chunk_chars changed?)", job.job_id, len(chunks),
                        state.chunks,
                    )  # fmt: skip
                # it cannot be redone: recorded as it is, the job goes on to its deadline
                state = await self._published(state)
            else:
                new = await self.collector.publish_level(
                    job.job_id, state.skill, 0, chunks,
                    self._per_task_chars(state.summary_chars, len(chunks)),
                    priority=state.priority, tenant=state.tenant,
                )  # fmt: skip
                if new:  # the last try died before these: maybe before its events too
                    for stored in self._emit_intake(state):
                        await stored
                state = await self._published(state)
        await self.timer.check(msg, job, state)

    def _per_task_chars(self, summary_chars: int, chunks: int) -> int:
        """The summary budget of one map task: the job's own for a one-chunk job."""
        return summary_chars if chunks == 1 else self.cfg.chunk_summary_chars

    async def _published(self, state: JobState) -> JobState:
        """Record the job's map tasks as all published (one write), so that its message
        coming back is taken for its timer. A full store skips the record rather than
        failing the intake (whose retry would publish every task again), and so does a
        write that keeps conflicting: the message's next return then redoes the intake
        (deduplicated within the stream's duplicate window) and records it."""
        try:
            _, current = await self.store.transition(state.job_id, lifecycle.published)
        except StateConflict as e:
            log.info("job %s: tasks published, record deferred: %s", state.job_id, e)
            return state
        except Exception as e:
            if not storage_full(e):
                raise
            log.warning("job %s: tasks published, record deferred: %s", state.job_id, e)
            return state
        return current

    def _tenant_of(self, msg: Msg, job: JobSubmit) -> str:
        """The job's tenant: its subject's (`jobs.submit.{tenant}`), else the one a trusted
        client claimed, else `default` (`agentbus.contract.tenants.job_tenant`)."""
        return job_tenant(subject=msg.subject, claimed=job.tenant, cfg=self.settings.tenants)

    def _emit_intake(self, state: JobState) -> tuple[asyncio.Future[None], ...]:
        """The intake events (accepted, then chunked), with ids derived from the job id
        (so emitting them twice records them once); each future completes once its event
        is stored."""
        accepted = self.bus.emit_soon(
            EventKind.JOB_ACCEPTED,
            job_id=state.job_id,
            event_id=f"{state.job_id}-accepted",
            data={
                "title": state.title,
                "chars": state.document_chars,
                "summary_chars": state.summary_chars,
                "priority": state.priority.value,
                "tenant": state.tenant,
            },
        )
        chunked = self.bus.emit_soon(
            EventKind.JOB_CHUNKED,
            job_id=state.job_id,
            event_id=f"{state.job_id}-chunked",
            data={"chunks": state.chunks, "chunk_chars": self.cfg.chunk_chars},
        )
        if state.chunks < 2:
            # one chunk, one summary: its live partial results are the final item (and
            # the deltas of a streaming backend), a publish less on the hot path
            return accepted, chunked
        # the job's live partial results begin with the chunk count (before any task)
        started = asyncio.ensure_future(
            self.bus.progress(
                StreamItem(job_id=state.job_id, kind=StreamKind.STARTED, count=state.chunks)
            )
        )
        return accepted, chunked, started
