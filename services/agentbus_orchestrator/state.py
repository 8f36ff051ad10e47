"""The one way the orchestrator reads and writes job state: the jobs KV bucket, with
compare-and-set writes of the transitions in `orchestrator.lifecycle`.

`transition(job_id, change)` loads the state (or takes the one this replica last wrote),
applies `change` (a pure function of the state) and writes the result only if nobody
wrote in between; on a conflict it waits a jittered, growing delay, reloads and applies
`change` again. The orchestrator batches the results of one job into one transition, so
at most one writer per job and replica contends; a write that still cannot land within
`budget_s` raises `StateConflict`, and the caller retries the message later (nak with a
delay): nothing is dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import nats.js.errors

from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.messages import JobState, decode_job_state
from agentbus.observability import metrics
from agentbus_orchestrator.errors import OrchestratorError

__all__ = ["JobStore", "StateConflict", "UnknownJob"]

_KNOWN_STATES_MAX: Final = 10_000
_BACKOFF_FIRST_S: Final = 0.002
_BACKOFF_MAX_S: Final = 0.25
_BUDGET_S: Final = 20.0

Loaded = tuple[JobState, int]
Change = Callable[[JobState], JobState | None]


class StateConflict(OrchestratorError):
    """A job's state kept changing under a write for longer than the write's budget."""


class UnknownJob(OrchestratorError):
    """No state for the job in the jobs KV bucket (never accepted, or expired)."""


def backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, first * 2**attempt)]."""
    return random.uniform(0.0, min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2**attempt))


class JobStore:
    def __init__(self, bus: Bus, *, budget_s: float = _BUDGET_S) -> None:
        self.bus = bus
        self._writes = metrics.JOB_STATE_WRITES.labels(bus.service)
        self._conflicts = metrics.JOB_STATE_CONFLICTS.labels(bus.service)
        self.budget_s = budget_s
        # The last state (and revision) this replica read or wrote of each running job.
        # It only ever saves the read before a compare-and-set write: a stale entry (another
        # replica moved the job on) fails the write, which then reads the job afresh.
        self._known: OrderedDict[str, Loaded] = OrderedDict()

    async def load(self, job_id: str) -> Loaded | None:
        kv = await self.bus.kv(subjects.JOBS_BUCKET)
        try:
            entry = await kv.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is None or entry.value is None:
            self._known.pop(job_id, None)
            return None
        loaded = decode_job_state(entry.value), entry.revision or 0
        self.remember(job_id, loaded)
        return loaded

    def known(self, job_id: str) -> Loaded | None:
        return self._known.get(job_id)

    def remember(self, job_id: str, loaded: Loaded) -> None:
        if loaded[0].status.terminal:
            self._known.pop(job_id, None)
            return
        self._known[job_id] = loaded
        self._known.move_to_end(job_id)
        while len(self._known) > _KNOWN_STATES_MAX:
            self._known.popitem(last=False)

    async def create(self, state: JobState) -> int | None:
        """Write a new job's state; None when the job already has one."""
        try:
            revision = await self.bus.kv_create(
                subjects.JOBS_BUCKET, state.job_id, state.model_dump_json().encode()
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        self.remember(state.job_id, (state, revision))
        return revision

    async def transition(
        self, job_id: str, change: Change, *, cached: bool = True
    ) -> tuple[JobState | None, JobState]:
        """Apply `change` with compare-and-set; returns (the state written or None when
        `change` declined, the job's current state). Raises `UnknownJob`, or
        `StateConflict` after `budget_s` of conflicting writes."""
        started = time.monotonic()
        loaded = self._known.get(job_id) if cached else None
        from_cache = loaded is not None
        attempt = 0
        while True:
            if loaded is None:
                loaded = await self.load(job_id)
                from_cache = False
            if loaded is None:
                raise UnknownJob(
                    f"unknown job {job_id}: no state in KV bucket {subjects.JOBS_BUCKET}"
                )
            state, revision = loaded
            new = change(state)
            if new is None:
                if from_cache:
                    # a declined change is only trusted on a fresh read: the cached state
                    # may be behind (and no write has checked it)
                    loaded = None
                    continue
                return None, state
            try:
                written = await self.bus.kv_update(
                    subjects.JOBS_BUCKET, job_id, new.model_dump_json().encode(), last=revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                self._conflicts.inc()
                loaded = None
                if time.monotonic() - started > self.budget_s:
                    raise StateConflict(
                        f"job {job_id}: state in KV bucket {subjects.JOBS_BUCKET} kept "
                        f"changing for {self.budget_s:g}s ({attempt + 1} conflicting writes)"
                    ) from None
                if not from_cache or attempt:
                    await asyncio.sleep(backoff_s(attempt))
                attempt += 1
                continue
            self._writes.inc()
            self.remember(job_id, (new, written))
            return new, new
