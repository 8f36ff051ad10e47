"""Fault-injection suite: the whole stack as processes, 200 jobs per scenario, one fault
each. Every scenario proves the same promise with exact counts:

    jobs accepted = jobs completed + jobs dead-lettered with a reason
    events emitted (distinct ids in AGENT_EVENTS) = rows archived (SQL), zero duplicates,
    none lost

(A step retried after its event was stored re-sends that event with the same id; when it
travels in a batch the stream keeps the copy, so the line reports such copies as `resent`:
the archive keeps one row per id, and a duplicate is a second id for one step.)

and prints one summary line (visible without `-s`). Faults come from the simulated
backend's text markers (`[[simulated:...]]`, see `summarize_worker.backends.simulated`),
signals to service processes, and restarts/kills of nats-server processes.

The suite: `harness` (this module: the probe, the outcome and its line), `workload`
(documents, short timings), `processes` (the stack, clusters, metrics), and one
`test_faults_*.py` per theme (unique basenames: pytest imports test modules by basename).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest

from agentbus.bus.core import Bus
from agentbus.bus.deadletters import DeadLetter, list_dead_letters
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import DeadLetterError
from agentbus.contract.messages import AgentEvent, EventKind, JobState, JobStatus, decode_job_state
from agentbus.contract.settings import NatsSettings
from agentbus_event_archiver import EventStore
from tests.conftest import stream_agent_events

T = TypeVar("T")

ONCE_KINDS = {
    EventKind.JOB_ACCEPTED,
    EventKind.JOB_CHUNKED,
    EventKind.JOB_COMPLETED,
    EventKind.JOB_FAILED,
    EventKind.TASK_COMPLETED,
}
"""Kinds that record a fact about a job or task which happens once: two of them is a duplicate."""

# Short timings so that a redelivery (ack_wait) or a retry (backoff) costs seconds.

# --- observing the run -----------------------------------------------------------------


class Probe:
    """The test's own view of the bus: submit, poll job states, read streams."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nats = NatsSettings(url=url, reconnect_wait_s=0.25)
        self.bus: Bus | None = None
        self.client: AgentBusClient | None = None

    async def __aenter__(self) -> Probe:
        self.client = await AgentBusClient(self.nats).connect()
        self.bus = await Bus.connect(self.nats, agent_id="fault-probe", service="test")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            await self.bus.close()
        if self.client is not None:
            await self.client.close()

    @property
    def b(self) -> Bus:
        assert self.bus is not None
        return self.bus

    async def submit(self, docs: dict[str, str]) -> list[str]:
        """Submit every document (job id -> text); returns the ids JetStream accepted."""
        assert self.client is not None
        client = self.client
        items = list(docs.items())
        accepted: list[str] = []
        for start in range(0, len(items), 50):
            batch = items[start : start + 50]
            accepted += await asyncio.gather(
                *(client.submit(text, job_id=job_id) for job_id, text in batch)
            )
        return accepted

    async def states(self, job_ids: list[str]) -> dict[str, JobState | None]:
        kv = await self.b.kv(subjects.JOBS_BUCKET)

        async def one(job_id: str) -> tuple[str, JobState | None]:
            for _ in range(20):
                try:
                    entry = await kv.get(job_id)
                except nats.js.errors.KeyNotFoundError:
                    return job_id, None
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.25)  # the server is restarting, or a leader moves
                    continue
                return job_id, decode_job_state(entry.value) if entry.value else None
            return job_id, None

        out: dict[str, JobState | None] = {}
        for start in range(0, len(job_ids), 50):
            out.update(await asyncio.gather(*(one(j) for j in job_ids[start : start + 50])))
        return out

    async def wait_terminal(
        self,
        job_ids: list[str],
        *,
        timeout_s: float,
        until: Callable[[int], bool] | None = None,
    ) -> dict[str, JobState]:
        """Poll until every job is completed or failed (or `until(terminal count)` holds)."""
        deadline = time.monotonic() + timeout_s
        final: dict[str, JobState] = {}
        pending = list(job_ids)
        while True:
            for job_id, state in (await self.states(pending)).items():
                if state is not None and state.status.terminal:
                    final[job_id] = state
            pending = [j for j in pending if j not in final]
            if not pending or (until is not None and until(len(final))):
                return final
            if time.monotonic() > deadline:
                summary = Counter(
                    (s.status.value if s else "missing")
                    for s in (await self.states(pending)).values()
                )
                raise AssertionError(
                    f"{len(pending)} of {len(job_ids)} jobs not finished within {timeout_s}s: "
                    f"{dict(summary)}; e.g. {pending[:3]}"
                )
            await asyncio.sleep(0.25)

    async def events(self) -> list[AgentEvent]:
        return await self._read(lambda: stream_agent_events(self.b))

    async def dead_letters(self) -> list[DeadLetter]:
        return await self._read(lambda: list_dead_letters(self.b.js, limit=100_000))

    @staticmethod
    async def _read(read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, tried again for ~5 s while this probe reconnects or a leader moves."""
        for attempt in range(10):
            try:
                return await read()
            except (nats.errors.Error, TimeoutError, DeadLetterError):
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def settle(self, *, timeout_s: float = 60.0) -> None:
        """Until no work is left anywhere: every job, task and result message acked (each
        handler acks last, after its events), and the event stream has stopped growing."""
        work = [
            (subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER),
            (subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER),
            (subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER),
        ]
        last_seq = -1
        busy: dict[str, tuple[int, int]] = {}

        async def idle() -> bool:
            nonlocal last_seq
            try:
                for stream, durable in work:
                    info = await self.b.js.consumer_info(stream, durable)
                    if info.num_pending or info.num_ack_pending:
                        busy.clear()
                        busy[stream] = (int(info.num_pending or 0), int(info.num_ack_pending))
                        return False
                events = await self.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)
            except (nats.errors.Error, TimeoutError):
                return False
            seq, last_seq = last_seq, int(events.state.last_seq)
            if seq != last_seq:
                await asyncio.sleep(0.3)
                return False
            return True

        try:
            await until(idle, timeout_s=timeout_s, what="the pipeline went idle")
        except AssertionError as e:
            raise AssertionError(f"{e}; still busy (pending, ack pending): {busy}") from None

    async def consumer_redelivered(self) -> int:
        info = await self.b.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
        return int(info.num_redelivered or 0)


async def archived_ids(database_url: str, *, expected: int, timeout_s: float = 30.0) -> list[str]:
    """The archive's event ids once it holds `expected` rows (or stops growing)."""
    store = EventStore(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        ids: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the archiver may be mid-commit
                ids = await store.event_ids()
            if len(ids) >= expected:
                await asyncio.sleep(0.5)  # anything extra (a duplicate) would show up now
                return await store.event_ids()
            await asyncio.sleep(0.25)
        return ids
    finally:
        await store.close()


@dataclass
class Outcome:
    scenario: str
    accepted: int
    completed: int
    dead_lettered: int
    """Failed jobs whose failure reason is on a dead letter of theirs."""
    failed_without_reason: int
    unfinished: int
    emitted: int
    """Distinct events (ids) in AGENT_EVENTS."""
    archived: int
    """Rows in the archive."""
    duplicates: int
    """Rows archived twice, or one step (kind, job, task) recorded under two ids."""
    lost: int
    """Events missing for a finished job (accepted, chunked, task completed, terminal)."""
    redelivered: int
    """Task deliveries after the first (task.started events with attempt > 1)."""
    resent: int = 0
    """Copies of an already stored event (same id) in the stream, by a retried step."""
    extra: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        more = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"[faults] {self.scenario:18} jobs accepted={self.accepted} "
            f"completed={self.completed} dead-lettered={self.dead_lettered} "
            f"(+unexplained failed={self.failed_without_reason} unfinished={self.unfinished}) | "
            f"events emitted={self.emitted} archived={self.archived} "
            f"duplicates={self.duplicates} lost={self.lost} resent={self.resent} | "
            f"task redeliveries={self.redelivered}{more}"
        )

    def check(self) -> None:
        assert self.accepted == self.completed + self.dead_lettered, self.line()
        assert self.failed_without_reason == 0 and self.unfinished == 0, self.line()
        assert self.emitted == self.archived, self.line()
        assert self.duplicates == 0, (self.line(), self.problems[:10])
        assert self.lost == 0, (self.line(), self.problems[:10])


async def measure(
    scenario: str,
    probe: Probe,
    job_ids: list[str],
    *,
    database_url: str,
    submitted: int,
    extra: dict[str, object] | None = None,
) -> tuple[Outcome, list[AgentEvent], dict[str, JobState | None]]:
    await probe.settle()
    states = await probe.states(job_ids)
    reasons_by_job: dict[str, list[str]] = {}
    for dead in await probe.dead_letters():
        if dead.job_id:
            reasons_by_job.setdefault(dead.job_id, []).append(dead.reason)
    copies = await probe.events()
    first: dict[str, AgentEvent] = {}
    for e in copies:
        first.setdefault(e.event_id, e)  # the copy the archive keeps (insert-or-ignore)
    events = list(first.values())
    stream_ids = [e.event_id for e in events]
    archive = await archived_ids(database_url, expected=len(stream_ids))

    problems: list[str] = []
    once = Counter((e.kind, e.job_id, e.task_id) for e in events if e.kind in ONCE_KINDS)
    duplicates = len(archive) - len(set(archive))
    for key, n in once.items():
        if n > 1:
            duplicates += n - 1
            problems.append(f"{n} x {key}")
    if set(archive) != set(stream_ids):
        problems.append(
            f"archive differs from stream: {len(set(stream_ids) - set(archive))} not archived, "
            f"{len(set(archive) - set(stream_ids))} archived but not in the stream"
        )

    by_job: dict[str, list[AgentEvent]] = {}
    for e in events:
        if e.job_id:
            by_job.setdefault(e.job_id, []).append(e)
    completed = dead_lettered = failed_without_reason = unfinished = lost = 0
    for job_id in job_ids:
        state = states.get(job_id)
        mine = by_job.get(job_id, [])
        kinds = Counter(e.kind for e in mine)
        if state is None or not state.status.terminal:
            unfinished += 1
            problems.append(f"job {job_id} unfinished: {state.status if state else 'missing'}")
            continue
        expected = [EventKind.JOB_ACCEPTED, EventKind.JOB_CHUNKED]
        if state.status is JobStatus.COMPLETED:
            assert state.summary, f"job {job_id} completed without a summary"
            completed += 1
            expected.append(EventKind.JOB_COMPLETED)
            done_tasks = {e.task_id for e in mine if e.kind is EventKind.TASK_COMPLETED}
            want = {f"0-{i}" for i in range(state.chunks)}
            for e in mine:
                if e.kind is EventKind.JOB_REDUCING:
                    level, tasks = e.data["level"], e.data["tasks"]
                    want |= {f"{level}-{i}" for i in range(tasks)}
            if want - done_tasks:
                lost += len(want - done_tasks)
                problems.append(f"job {job_id}: no task.completed for {sorted(want - done_tasks)}")
        else:
            reasons = reasons_by_job.get(job_id, [])
            if state.error and any(r and r in state.error for r in reasons):
                dead_lettered += 1
            else:
                failed_without_reason += 1
                problems.append(f"job {job_id} failed without a dead letter: {state.error}")
            expected.append(EventKind.JOB_FAILED)
        for kind in expected:
            if kinds[kind] == 0:
                lost += 1
                problems.append(f"job {job_id}: no {kind.value} event")
    redelivered = sum(
        1 for e in events if e.kind is EventKind.TASK_STARTED and int(e.data.get("attempt", 1)) > 1
    )
    outcome = Outcome(
        scenario=scenario,
        accepted=submitted,
        completed=completed,
        dead_lettered=dead_lettered,
        failed_without_reason=failed_without_reason,
        unfinished=unfinished,
        emitted=len(stream_ids),
        archived=len(archive),
        duplicates=duplicates,
        lost=lost,
        redelivered=redelivered,
        resent=len(copies) - len(events),
        extra=dict(extra or {}),
        problems=problems,
    )
    return outcome, events, states


def report(capsys: pytest.CaptureFixture[str], outcome: Outcome) -> None:
    """One summary line per scenario, shown even when pytest captures output."""
    with capsys.disabled():
        print("\n" + outcome.line(), flush=True)


def holds(pred: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain condition for `until`."""

    async def cond() -> bool:
        return pred()

    return cond


async def until(cond: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout_s}s) waiting until {what}")
        await asyncio.sleep(0.1)
