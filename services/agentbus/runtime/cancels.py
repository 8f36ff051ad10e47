"""What a worker knows of canceled jobs, and how it learns it quickly.

Two sources, because either alone misses cases:

- the broadcast `jobs.canceled.{job_id}` (core NATS, every replica subscribed, no queue
  group) reaches every connected worker within a round trip of the cancel: its running
  tasks of the job are cancelled at once (the skill's coroutine gets CancelledError, so
  an HTTP request of the openai backend is aborted with it), and tasks of the job pulled
  later are dropped without running;
- a worker that was not subscribed when the broadcast went out (started later, or
  disconnected at the time) reads the job's state in the jobs KV bucket the first time it
  meets the job after (re)connecting: the orchestrator writes the canceled state before
  it broadcasts, so a broadcast missed means a state already written.

The per-job read is one KV get per job and replica (not per task), shared by every slot
that meets the job at once, and it runs beside the task rather than before it: waiting
for it cost a round trip per task of every new job (`bench pipeline`, single-chunk jobs:
throughput ratio to the floor 0.39 with the wait, 0.54 without, same loaded machine). A
late joiner may so start a task of a canceled job, which the read then interrupts within
its round trip; a worker that has seen the cancel never starts one. The record is
dropped on a reconnect (the broadcasts of the gap are lost), so each job is read again.

Only a task stored before this replica was listening needs the read: the orchestrator
publishes no task of a job after its cancel (it records nothing more, so no level
completes), so a task stored later belongs to a job whose cancel, if any, came while the
broadcast was reaching us. A task stored more than `SKEW_MARGIN_S` after the replica
(re)started listening is so taken on the broadcast alone - in steady state no task
costs a read (it cost ~0.25 ms of worker and ~0.1 ms of nats-server CPU per one-chunk
job, docs/benchmarks.md). Left, for a replica that began listening after a cancel: the
tasks an orchestrator was already publishing when the cancel came (an intake under way,
a reduce level decided just before) may run on it; their results are ignored (the job
records nothing after its cancel), and replicas that were listening drop them.
`CancelBook` is the bookkeeping, free of I/O; `CancelWatch` does the subscribing and
reading around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.bus.connect import flush_barrier
from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import JobCanceled, JobStatus, decode, decode_job_state

__all__ = ["CancelBook", "CancelWatch"]

log = logging.getLogger("agentbus.worker")

MAX_JOBS_REMEMBERED: Final = 10_000
SKEW_MARGIN_S: Final = 2.0
"""Clock difference allowed between nats-server (a message's stored time) and a worker."""
_MAX_NOTE_BYTES: Final = 4096


def _touch(lru: OrderedDict[str, None], key: str, *, limit: int) -> None:
    lru[key] = None
    lru.move_to_end(key)
    while len(lru) > limit:
        lru.popitem(last=False)


class CancelBook:
    """Canceled jobs seen, jobs whose state was read in this connection epoch, and the
    running tasks of each job. Bounded (least recently used forgotten first)."""

    def __init__(self, *, limit: int = MAX_JOBS_REMEMBERED) -> None:
        self.limit = limit
        self._canceled: OrderedDict[str, None] = OrderedDict()
        self._checked: OrderedDict[str, None] = OrderedDict()
        self._epoch = 0
        self._running: dict[str, set[asyncio.Task[Any]]] = {}

    def is_canceled(self, job_id: str) -> bool:
        return job_id in self._canceled

    def cancel(self, job_id: str) -> list[asyncio.Task[Any]]:
        """Record the job canceled; returns its running tasks (to be cancelled)."""
        _touch(self._canceled, job_id, limit=self.limit)
        self._checked.pop(job_id, None)
        return list(self._running.get(job_id, ()))

    def needs_check(self, job_id: str, *, epoch: int) -> bool:
        """Must the job's state be read before running its task? Only when it is neither
        known canceled nor read since the connection epoch `epoch` began."""
        if epoch != self._epoch:
            self._epoch = epoch
            self._checked.clear()
        return job_id not in self._canceled and job_id not in self._checked

    def checked(self, job_id: str, *, epoch: int, canceled: bool) -> None:
        if canceled:
            self.cancel(job_id)
        elif epoch == self._epoch:
            _touch(self._checked, job_id, limit=self.limit)

    @contextlib.contextmanager
    def running(self, job_id: str, task: asyncio.Task[Any]) -> Iterator[None]:
        self._running.setdefault(job_id, set()).add(task)
        try:
            yield
        finally:
            tasks = self._running.get(job_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._running[job_id]


class CancelWatch:
    """The broadcast subscription and the per-job state read of one worker replica."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.book = CancelBook()
        self._sub: Subscription | None = None
        self._lookups: dict[str, asyncio.Future[bool]] = {}
        self._epoch = -1
        self._since_s = float("inf")
        """Wall-clock time this connection epoch was first seen listening (a task stored
        before it, plus the margin, may belong to a cancel we never heard)."""

    async def start(self) -> None:
        """Subscribe, confirmed by the server before any task is pulled (a cancel after
        this point reaches us; one before it is in the job state we read)."""
        self._sub = await self.bus.nc.subscribe(
            subjects.JOBS_CANCELED_WILDCARD, cb=self._on_broadcast
        )
        await flush_barrier(self.bus.nc)
        self._listening()

    def _listening(self) -> int:
        """The connection epoch (reconnect count); a new one starts the clock again
        (seen late rather than early: the later, the more tasks are read, never fewer)."""
        epoch = int(self.bus.nc.stats.get("reconnects", 0))
        if epoch != self._epoch:
            self._epoch, self._since_s = epoch, time.time()
        return epoch

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_broadcast(self, msg: Msg) -> None:
        try:
            note = decode(msg.data, JobCanceled, max_bytes=_MAX_NOTE_BYTES).payload
        except MessageDecodeError as e:
            log.warning("ignored a cancel broadcast on %s: %s", msg.subject, e)
            return
        if msg.subject != subjects.job_canceled(note.job_id):
            log.warning("ignored a cancel of job %s on %s", note.job_id, msg.subject)
            return
        for task in self.book.cancel(note.job_id):
            task.cancel()

    def seen(self, job_id: str) -> bool:
        """Has this replica learned that the job is canceled?"""
        return self.book.is_canceled(job_id)

    def check(self, job_id: str, *, stored_at_s: float | None = None) -> bool:
        """Is the job known canceled (drop its task)? When not, and the job is met for the
        first time in this connection epoch in a task stored (`stored_at_s`, the server's
        clock in Unix seconds; None: unknown) before we were listening, its state is read in the
        background: a canceled state interrupts the job's running tasks (the one about to
        start too)."""
        self._lookup(job_id, stored_at_s=stored_at_s)
        return self.book.is_canceled(job_id)

    async def canceled(self, job_id: str, *, stored_at_s: float | None = None) -> bool:
        """Is the job canceled? From memory, else (first time in this connection epoch)
        from its state, waited for; a read that fails counts as not canceled (the
        broadcast, the orchestrator and the next read still stop the job)."""
        lookup = self._lookup(job_id, stored_at_s=stored_at_s)
        if lookup is None:
            return self.book.is_canceled(job_id)
        return await asyncio.shield(lookup)

    def _lookup(self, job_id: str, *, stored_at_s: float | None) -> asyncio.Future[bool] | None:
        epoch = self._listening()
        if stored_at_s is not None and stored_at_s > self._since_s + SKEW_MARGIN_S:
            return None  # stored while we listened: a cancel of its job was broadcast to us
        if not self.book.needs_check(job_id, epoch=epoch):
            return None
        lookup = self._lookups.get(job_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._read(job_id, epoch))
            self._lookups[job_id] = lookup
            lookup.add_done_callback(lambda _f: self._lookups.pop(job_id, None))
        return lookup

    async def _read(self, job_id: str, epoch: int) -> bool:
        try:
            kv = await self.bus.kv(subjects.JOBS_BUCKET)
            entry = await kv.get(job_id)
            canceled = bool(
                entry.value and decode_job_state(entry.value).status is JobStatus.CANCELED
            )
        except nats.js.errors.KeyNotFoundError:
            canceled = False
        except Exception as e:  # never fatal to a task: the other paths still stop it
            log.debug("state of job %s not read: %s", job_id, e)
            return self.book.is_canceled(job_id)
        if canceled:
            for task in self.book.cancel(job_id):
                task.cancel()
        else:
            self.book.checked(job_id, epoch=epoch, canceled=False)
        return canceled or self.book.is_canceled(job_id)
