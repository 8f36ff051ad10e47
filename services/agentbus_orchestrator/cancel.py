"""Cancel: `jobs.cancel` requests, answered by one orchestrator replica (queue group).

The decision is the lifecycle's (`lifecycle.cancel`, a compare-and-set transition like
every other); around it, in this order:

1. the canceled state is written to the jobs KV bucket: from then on no result is
   recorded, no level completes and no reduce starts (every replica reads it on its next
   write), and a worker that first meets the job (a late joiner) reads it there;
2. `jobs.canceled.{job_id}` is broadcast on core NATS to every worker replica (no queue
   group): they drop the job's queued tasks as they pull them and cancel the coroutines
   of its running ones. Core NATS, not a stream: it reaches every subscriber within a
   round trip, and whoever was not subscribed (a replica started or reconnected after
   it) learns the same from the job state, which is written first;
3. the requester gets one line (`CancelReply`): the job is canceled once 1 and 2 are
   done, so the answer does not wait for the clean-up;
4. the job message, the job's timer, is acked (`Collector.end_timer`), `job.canceled` is
   emitted, the job's parts and its objects in the documents bucket are removed.

A job not taken in yet (its message still queued) gets a canceled state in its place: the
intake then finds a finished job and acks the message without running anything. A cancel
of a finished job changes nothing and says so; a repeated cancel repeats the broadcast
(cheap, and it repairs a broadcast lost when a replica died between write and publish).
"""

from __future__ import annotations

import logging
from typing import Final

from nats.aio.msg import Msg

from agentbus.bus.connect import flush_barrier
from agentbus.bus.core import Bus
from agentbus.bus.documents import delete_documents
from agentbus.contract import subjects
from agentbus.contract.errors import AgentBusError, MessageDecodeError
from agentbus.contract.messages import (
    CancelReply,
    CancelRequest,
    EventKind,
    JobCanceled,
    JobState,
    JobStatus,
    decode,
    encode,
    utcnow,
)
from agentbus.observability import metrics
from agentbus.observability.logs import log_context
from agentbus_orchestrator import lifecycle, progress
from agentbus_orchestrator.collect import Collector
from agentbus_orchestrator.state import JobStore, UnknownJob

__all__ = ["Canceller", "job_objects"]

log = logging.getLogger("orchestrator")

_MAX_REQUEST_BYTES: Final = 64 * 1024


def job_objects(job_id: str) -> list[str]:
    """The documents-bucket objects a job may own: its document (stored by the client
    above the inline limit) and its final summary (above the inline limit)."""
    return [f"{job_id}.txt", f"{job_id}.summary.txt"]


class Canceller:
    def __init__(self, bus: Bus, store: JobStore, collector: Collector, *, service: str) -> None:
        self.bus = bus
        self.store = store
        self.collector = collector
        self.service = service

    async def on_request(self, msg: Msg) -> None:
        try:
            req = decode(msg.data, CancelRequest, max_bytes=_MAX_REQUEST_BYTES).payload
        except MessageDecodeError as e:
            await self._reply(msg, CancelReply(job_id="unknown", canceled=False, error=str(e)))
            return
        refusal = subjects.tenant_request_refusal(
            msg.subject, req.job_id, base=subjects.JOBS_CANCEL
        )
        if refusal is not None:
            await self._reply(msg, CancelReply(job_id=req.job_id, canceled=False, error=refusal))
            return
        with log_context(job_id=req.job_id):
            written: JobState | None = None
            try:
                reply, written = await self.cancel(req.job_id, reason=req.reason)
            except Exception as e:  # one line to the requester; the service carries on
                log.exception("cancel of job %s failed", req.job_id)
                reply = CancelReply(
                    job_id=req.job_id,
                    canceled=False,
                    error=f"cancel of job {req.job_id} failed: {type(e).__name__}: {e}",
                )
            await self._reply(msg, reply)
            if written is not None:
                await self._clean_up(written, reason=req.reason)

    async def _reply(self, msg: Msg, reply: CancelReply) -> None:
        if msg.reply:
            await self.bus.nc.publish(msg.reply, encode(reply, sender=self.bus.agent_id))

    async def cancel(self, job_id: str, *, reason: str) -> tuple[CancelReply, JobState | None]:
        """Write the canceled state and broadcast it; returns the reply and the state
        written (None when this call changed nothing), whose clean-up is `_clean_up`."""
        before: JobState | None = None

        def change(state: JobState) -> JobState | None:
            nonlocal before
            before = state
            return lifecycle.cancel(state, reason=reason, now=utcnow())

        try:
            written, current = await self.store.transition(job_id, change, cached=False)
        except UnknownJob:
            tombstone = lifecycle.canceled_before_intake(job_id, reason=reason, now=utcnow())
            if await self.store.create(tombstone) is not None:
                await self._broadcast(job_id, reason)
                reply = CancelReply(
                    job_id=job_id,
                    canceled=True,
                    status=JobStatus.CANCELED.value,
                    detail=f"job {job_id} canceled before the orchestrator took it in",
                )
                return reply, tombstone
            written, current = await self.store.transition(job_id, change, cached=False)
        assert before is not None
        verdict = lifecycle.cancel_detail(before, written)
        if written is not None or current.status is JobStatus.CANCELED:
            await self._broadcast(job_id, reason)
        reply = CancelReply(
            job_id=job_id, canceled=verdict.canceled, status=verdict.status.value,
            detail=verdict.detail,
        )  # fmt: skip
        return reply, written

    async def _broadcast(self, job_id: str, reason: str) -> None:
        note = JobCanceled(job_id=job_id, reason=reason)
        await self.bus.nc.publish(
            subjects.job_canceled(job_id), encode(note, sender=self.bus.agent_id)
        )
        await flush_barrier(self.bus.nc)

    async def _clean_up(self, state: JobState, *, reason: str) -> None:
        await self.collector.end_timer(state)
        try:  # the live stream's last item: a reader following the job ends here
            await self.bus.progress(progress.final_item(state))
        except AgentBusError as e:
            log.warning("final progress item of canceled job %s not stored: %s", state.job_id, e)
        metrics.JOBS_CANCELED.labels(self.service).inc()
        try:
            await self.bus.emit(
                EventKind.JOB_CANCELED,
                job_id=state.job_id,
                event_id=f"{state.job_id}-canceled",
                data={
                    "reason": reason,
                    "level": state.level,
                    "level_done": state.level_done,
                    "level_tasks": state.level_tasks,
                },
            )
        except AgentBusError as e:
            log.warning("job.canceled event of %s not stored: %s", state.job_id, e)
        await self.collector.drop_parts(state.job_id)
        try:
            removed = await delete_documents(self.bus.js, job_objects(state.job_id))
        except AgentBusError as e:
            log.warning("documents of canceled job %s not removed: %s", state.job_id, e)
        else:
            if removed:
                log.debug("removed %s", ", ".join(removed))
        log.info("job %s canceled%s", state.job_id, f": {reason}" if reason else "")
