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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import pytest

from agentbus.bus.core import Bus
from agentbus.bus.deadletters import DeadLetter, list_dead_letters, replay_dead_letter
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.errors import DeadLetterError
from agentbus.contract.headers import (
    DLQ_HEADER_DELIVERIES,
    DLQ_HEADER_MSG_ID,
    DLQ_HEADER_SUBJECT,
    MSG_ID_HEADER,
)
from agentbus.contract.messages import (
    AgentEvent,
    EventKind,
    JobState,
    JobStatus,
    TaskAssign,
    decode,
    decode_job_state,
)
from agentbus.contract.settings import NatsSettings, Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import ServiceProcess, Stack, free_port
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventStore
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, dlq_messages, make_settings, stream_agent_events

T = TypeVar("T")

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

JOBS = 200
AGENTBUS = [sys.executable, "-m", "agentbus"]
ONCE_KINDS = {
    EventKind.JOB_ACCEPTED,
    EventKind.JOB_CHUNKED,
    EventKind.JOB_COMPLETED,
    EventKind.JOB_FAILED,
    EventKind.TASK_COMPLETED,
}
"""Kinds that record a fact about a job or task which happens once: two of them is a duplicate."""

# Short timings so that a redelivery (ack_wait) or a retry (backoff) costs seconds.
BASE_ENV: dict[str, str] = {
    "AGENTBUS_SUMMARIZER__BACKEND": "simulated",
    "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS": "50",
    "AGENTBUS_TOPOLOGY__ACK_WAIT_S": "2",
    "AGENTBUS_TOPOLOGY__MAX_DELIVER": "5",
    "AGENTBUS_WORKER__CONCURRENCY": "8",
    "AGENTBUS_WORKER__IN_PROGRESS_INTERVAL_S": "0.5",
    "AGENTBUS_WORKER__BACKOFF_S": "[0.2, 0.5]",
    "AGENTBUS_WORKER__FETCH_TIMEOUT_S": "0.5",
    "AGENTBUS_WORKER__GRACE_PERIOD_S": "15",
    "AGENTBUS_NATS__RECONNECT_WAIT_S": "0.25",
    "AGENTBUS_ARCHIVER__FETCH_TIMEOUT_S": "0.25",
    "AGENTBUS_LOG_LEVEL": "INFO",
}


# --- workload ------------------------------------------------------------------------


def small_doc(i: int, marker: str = "") -> str:
    """A single-chunk document (well under any chunk budget)."""
    return (
        f"Report {i} from the river delta. The harbor saw {i % 7 + 1} ferries today. "
        f"Farmers sold salt at the market. {marker}"
    ).strip()


def long_doc(i: int, *, paragraphs: int, marker_at: int | None = None, marker: str = "") -> str:
    """A document of `paragraphs` paragraphs of ~300 chars (one chunk each at 400 chars)."""
    out = []
    for p in range(paragraphs):
        text = (
            f"Section {p} of document {i} describes the estuary in season {p}. "
            f"The tide rose over the levee and the channel carried sediment to the marsh. "
            f"Boats waited at the ferry while the village market traded fresh water and salt. "
            f"Storms in autumn moved the delta, and the bridge was closed for {p + 1} days."
        )
        if p == marker_at:
            text += f" {marker}"
        out.append(text)
    return "\n\n".join(out)


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """Put the scenario's settings in this process's environment: the stack's provisioning
    (in this process) and every service process (which inherit it) see the same values."""

    def apply(**overrides: str) -> dict[str, str]:
        env = {**BASE_ENV, **overrides}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


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

        async def idle() -> bool:
            nonlocal last_seq
            try:
                for stream, durable in work:
                    info = await self.b.js.consumer_info(stream, durable)
                    if info.num_pending or info.num_ack_pending:
                        return False
                events = await self.b.js.stream_info(subjects.AGENT_EVENTS_STREAM)
            except (nats.errors.Error, TimeoutError):
                return False
            seq, last_seq = last_seq, int(events.state.last_seq)
            if seq != last_seq:
                await asyncio.sleep(0.3)
                return False
            return True

        await until(idle, timeout_s=timeout_s, what="the pipeline went idle")

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
    events = list({e.event_id: e for e in copies}.values())  # first copy of each id
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


# --- running the stack -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path, nats_url: str, *, workers: int, env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """The orchestrator, `workers` workers and the archiver as processes (started from a
    worker thread: `Stack.start` runs its own event loop to provision)."""
    stack = Stack(
        data_dir=tmp_path / "stack",
        workers=workers,
        nats_url=nats_url,
        env=env,
        ready_timeout_s=60,
    )
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop, grace_s=20)


def archive_url(stack: Stack) -> str:
    return f"sqlite+aiosqlite:///{stack.data_dir / 'archive.db'}"


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample of a service's /metrics (None when absent or unreachable)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def until(cond: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout_s}s) waiting until {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def nats_single(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(store_dir=tmp_path / "js")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def wait_in_flight(victim: ServiceProcess, *, at_least: int) -> None:
    """Give `victim` up to 5 s to hold `at_least` tasks in flight (best effort: the fault
    is injected either way, and the scenario's counts hold whatever it held)."""

    async def busy() -> bool:
        n = await asyncio.to_thread(
            metric, victim.url, "agentbus_worker_in_flight", consumer="summarize-workers"
        )
        return bool(n and n >= at_least)

    with contextlib.suppress(AssertionError):
        await until(busy, timeout_s=5, what="victim has work in flight")


# --- scenarios -----------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_worker_sigkill_mid_task_is_redelivered_and_finished_by_another_replica(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="300", AGENTBUS_WORKER__CONCURRENCY="4")
    docs = {f"kill-{i:03}": small_doc(i) for i in range(JOBS)}
    async with running_stack(tmp_path, nats_single.url, workers=3) as stack:
        victim = stack.by_role("worker")[0]
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)

            await wait_in_flight(victim, at_least=2)
            victim.signal(signal.SIGKILL)
            assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
            await probe.wait_terminal(job_ids, timeout_s=90)
            outcome, events, _states = await measure(
                "worker-sigkill", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
        # the tasks the victim had started but not finished ...
        started = {
            (e.job_id, e.task_id)
            for e in events
            if e.kind is EventKind.TASK_STARTED and e.agent_id == victim.agent_id
        }
        finished_by = {
            (e.job_id, e.task_id): e.agent_id for e in events if e.kind is EventKind.TASK_COMPLETED
        }
        orphans = {t for t in started if finished_by.get(t) != victim.agent_id}
        # ... were redelivered (attempt 2+) and completed by another replica
        redelivered_to = {
            (e.job_id, e.task_id): e.agent_id
            for e in events
            if e.kind is EventKind.TASK_STARTED and int(e.data["attempt"]) > 1
        }
        outcome.extra["killed-mid-task"] = len(orphans)
        report(capsys, outcome)
        outcome.check()
        assert orphans, "the killed worker had no task in flight"
        for task in orphans:
            assert task in redelivered_to, f"{task} was not redelivered"
            assert redelivered_to[task] != victim.agent_id
            assert finished_by[task] not in (None, victim.agent_id)
        assert outcome.completed == JOBS


@pytest.mark.timeout(150)
async def test_in_progress_keeps_long_summaries_from_being_redelivered(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ack_wait 2 s; 16 summaries take 5 s each, heartbeats every 0.5 s
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20", AGENTBUS_WORKER__CONCURRENCY="12")
    slow_ms = 5000
    docs = {f"slow-{i:03}": small_doc(i, f"[[simulated:latency_ms={slow_ms}]]") for i in range(16)}
    docs |= {f"fast-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        job_ids = await probe.submit(docs)
        samples: list[tuple[int, int]] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    info = await probe.b.js.consumer_info(
                        subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER
                    )
                    samples.append((int(info.num_redelivered), int(info.num_ack_pending)))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        try:
            await probe.wait_terminal(job_ids, timeout_s=90)
        finally:
            sampling = False
            await sampler
        outcome, events, _ = await measure(
            "slow-in-progress", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
        )  # fmt: skip
    slow_done = [
        e
        for e in events
        if e.kind is EventKind.TASK_COMPLETED and e.job_id and e.job_id.startswith("slow-")
    ]
    outcome.extra["long-tasks"] = len(slow_done)
    outcome.extra["max-consumer-redelivered"] = max(r for r, _ in samples)
    outcome.extra["max-ack-pending"] = max(p for _, p in samples)
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    # every long summary really outlived ack_wait while it was held (not a timing assertion:
    # the simulated latency is the input, this checks the scenario is what it claims)
    assert len(slow_done) == 16
    assert all(e.data["duration_ms"] >= slow_ms for e in slow_done)
    assert any(pending > 0 for _, pending in samples)
    # a replica holds no task it has no slot for: one delivered beyond its free slots
    # waits unacked, without in_progress, and is redelivered once ack_wait passes
    assert max(p for _, p in samples) <= 2 * 12, "tasks were delivered beyond the free slots"
    assert max(r for r, _ in samples) == 0, "a task was redelivered while in progress"
    assert outcome.redelivered == 0
    started = Counter((e.job_id, e.task_id) for e in events if e.kind is EventKind.TASK_STARTED)
    assert set(started.values()) == {1}, "a task was started twice"


@pytest.mark.timeout(60)
async def test_without_in_progress_a_long_summary_is_redelivered(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    """The control for the test above: with heartbeats slower than ack_wait the same kind of
    long summary is delivered again, so the scenario above does detect redeliveries."""
    s = make_settings(
        nats_server.url,
        tmp_path,
        topology={"ack_wait_s": 1.0, "max_deliver": 3},
        worker={"in_progress_interval_s": 30.0, "concurrency": 2},
        summarizer={"backend": "simulated", "simulated_latency_ms": 10.0},
    )
    async with Probe(nats_server.url) as probe:
        from agentbus.bus.topology import provision

        await provision(probe.b.js, s)
        await running.start(Orchestrator, s, "orch-ctl")
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-ctl")
        [job_id] = await probe.submit({"ctl-1": small_doc(1, "[[simulated:latency_ms=2500]]")})
        await probe.wait_terminal([job_id], timeout_s=30)
        events = await probe.events()
    attempts = sorted(int(e.data["attempt"]) for e in events if e.kind is EventKind.TASK_STARTED)
    assert attempts[:2] == [1, 2], attempts


@pytest.mark.timeout(180)
async def test_poison_tasks_are_retried_dead_lettered_listed_and_replayed(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    max_deliver, backoff = 3, [0.2, 0.5]
    fault_env(
        AGENTBUS_TOPOLOGY__MAX_DELIVER=str(max_deliver),
        AGENTBUS_WORKER__BACKOFF_S=json.dumps(backoff),
        AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20",
        AGENTBUS_ORCHESTRATOR__CHUNK_CHARS="400",
        AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS="100",
    )
    flag = tmp_path / "backend-down.flag"  # the "broken dependency" of the poison tasks
    flag.write_text("down\n")
    poison = f"[[simulated:fail-while={flag}]]"
    docs: dict[str, str] = {}
    docs |= {f"poison-{i:03}": small_doc(i, poison) for i in range(6)}
    docs |= {
        f"poison-multi-{i}": long_doc(i, paragraphs=3, marker_at=1, marker=poison) for i in range(2)
    }
    docs |= {f"fatal-{i:03}": small_doc(i, "[[simulated:fatal]]") for i in range(2)}
    docs |= {f"ok-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with running_stack(tmp_path, nats_single.url, workers=2) as stack:
        cli_env = {**os.environ, "AGENTBUS_NATS__URL": nats_single.url}
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            first = await probe.wait_terminal(job_ids, timeout_s=90)
            failed = {j for j, s in first.items() if s.status is JobStatus.FAILED}
            assert failed == {j for j in job_ids if not j.startswith("ok-")}

            # the dead letters: original payload and headers, and the reason
            letters = await list_dead_letters(probe.b.js)
            assert len(letters) == len(failed)
            assert {d.job_id for d in letters} == failed
            for d in letters:
                assert d.subject == "dlq.tasks" and d.stream == subjects.TASKS_STREAM
                assert d.original_subject == subjects.task_assign("summarize")
                assert d.original_msg_id == f"{d.job_id}:{d.task_id}"
                task = decode(d.data, TaskAssign).payload  # byte-for-byte the original task
                assert (task.job_id, task.task_id) == (d.job_id, d.task_id)
                assert "[[simulated:" in task.text
                state = first[task.job_id]
                assert state.error and d.reason in state.error  # the job failed with the reason
                if d.job_id and d.job_id.startswith("fatal-"):
                    assert d.deliveries == 1 and "permanent" in d.reason
                else:
                    assert d.deliveries == max_deliver and "fail-while" in d.reason
                    assert f"after {max_deliver} attempt(s)" in d.reason
            raw = await dlq_messages(probe.b)
            for _subject, headers, _data in raw:
                assert headers[DLQ_HEADER_SUBJECT] == subjects.task_assign("summarize")
                assert headers[MSG_ID_HEADER].startswith("dlq-") and headers[DLQ_HEADER_MSG_ID]
                assert int(headers[DLQ_HEADER_DELIVERIES]) in (1, max_deliver)
            # retried with the configured backoff before giving up
            events = await probe.events()
            retried = [e for e in events if e.kind is EventKind.TASK_RETRIED]
            poisoned = [d for d in letters if d.deliveries == max_deliver]
            assert len(retried) == len(poisoned) * (max_deliver - 1)
            for d in poisoned:
                mine = sorted(
                    (e.data["attempt"], e.data["delay_s"])
                    for e in retried
                    if (e.job_id, e.task_id) == (d.job_id, d.task_id)
                )
                assert mine == [(a, backoff[min(a - 1, len(backoff) - 1)]) for a in (1, 2)]
            before, _, _ = await measure(
                "dead-letters", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
            before.check()
            assert before.dead_lettered == len(failed) == 10

            # `agentbus dlq list`
            listed = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "list", "--json"],
                env=cli_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert {r["id"] for r in rows} == {d.id for d in letters}
            assert all(r["reason"] and r["job_id"] in failed for r in rows)
            table = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "list"],
                env={**cli_env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert table.returncode == 0 and "fail-while" in table.stdout, table.stdout

            # fix the dependency, then `agentbus dlq replay ID...` the retryable ones
            flag.unlink()
            to_replay = sorted(d.id for d in letters if d.deliveries == max_deliver)
            replayed = await asyncio.to_thread(
                subprocess.run, [*AGENTBUS, "dlq", "replay", *map(str, to_replay)],
                env={**cli_env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.count("replayed dead letter") == len(to_replay)
            replayed_jobs = [d.job_id for d in letters if d.id in to_replay and d.job_id]

            async def reopened_done() -> bool:
                st = await probe.states(replayed_jobs)
                return all(s is not None and s.status is JobStatus.COMPLETED for s in st.values())

            await until(reopened_done, timeout_s=60, what="replayed jobs completed")
            left = await list_dead_letters(probe.b.js)
            assert sorted(d.job_id or "" for d in left) == ["fatal-000", "fatal-001"]
            outcome, events, states = await measure(
                "dead-letters", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
                extra={"dead-lettered-first": before.dead_lettered, "replayed": len(to_replay)},
            )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS - 2 and outcome.dead_lettered == 2
    for job_id in replayed_jobs:
        final = states[job_id]
        assert final is not None and final.error is None and final.summary
        kinds = [e.kind for e in events if e.job_id == job_id]
        assert kinds.count(EventKind.JOB_FAILED) == 1  # its history keeps the failure
        assert kinds.index(EventKind.JOB_FAILED) < kinds.index(EventKind.JOB_COMPLETED)
    multi = [states[j] for j in replayed_jobs if j.startswith("poison-multi-")]
    assert all(s is not None and s.chunks == 3 for s in multi)


@pytest.mark.timeout(90)
async def test_replayed_job_dead_letter_is_taken_in_again(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """A job whose document was missing at intake fails and is dead-lettered on `dlq.jobs`
    with the reason; once the document is there, replaying the dead letter takes the job in
    again and it completes."""
    from agentbus.bus.documents import store_document
    from agentbus.contract.messages import JobSubmit

    s = settings.model_copy(
        update={"summarizer": settings.summarizer.model_copy(update={"backend": "simulated"})}
    )
    await running.start(Orchestrator, s, "orch-j")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-j")
    text = b"A document that arrived late. It was uploaded after the job. Now it is here."
    # a reference to a document that is not in the object store yet
    ref = await store_document(bus.js, name="late.txt", data=text)
    store = await bus.js.object_store(subjects.DOCUMENTS_BUCKET)
    await store.delete("late.txt")
    await bus.publish(
        subjects.JOBS_SUBJECT, JobSubmit(job_id="late-1", document=ref), msg_id="late-1",
        stream=subjects.JOBS_STREAM,
    )  # fmt: skip
    async with AgentBusClient(s.nats) as client:
        failed = await client.wait("late-1", timeout_s=60)
        assert failed.status is JobStatus.FAILED and failed.error
        [dead] = await list_dead_letters(bus.js, stream="jobs")
        assert dead.job_id == "late-1" and dead.reason
        await store_document(bus.js, name="late.txt", data=text)
        result = await replay_dead_letter(bus.js, dead.id)
        assert result.removed and not result.duplicate
        assert result.msg_id == "late-1:replay-" + str(dead.id)
        for _ in range(100):
            state = await client.status("late-1")
            if state is not None and state.status is JobStatus.COMPLETED:
                break
            await asyncio.sleep(0.1)
    assert state is not None and state.status is JobStatus.COMPLETED, state
    assert state.summary and state.error is None
    assert await list_dead_letters(bus.js) == []


@pytest.mark.timeout(60)
async def test_max_deliveries_advisory_dead_letters_what_no_worker_did(
    nats_server: EmbeddedNatsServer, tmp_path: Path, running: Running
) -> None:
    """The safety net: workers that think they may retry 10 times meet a consumer
    provisioned for 2 (+1): JetStream stops delivering while no worker gave up. The
    orchestrator hears the max-deliveries advisory, files the dead letter, takes the task
    off TASKS and fails the job with the reason."""
    provisioned = make_settings(nats_server.url, tmp_path, topology={"max_deliver": 2})
    workers = make_settings(
        nats_server.url,
        tmp_path,
        topology={"max_deliver": 10},
        worker={"backoff_s": [0.1]},
        summarizer={"backend": "simulated", "simulated_latency_ms": 1.0},
    )
    async with Probe(nats_server.url) as probe:
        from agentbus.bus.topology import provision

        await provision(probe.b.js, provisioned)
        await running.start(Orchestrator, provisioned, "orch-adv")
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), workers, "worker-adv")
        [job_id] = await probe.submit({"adv-1": small_doc(1, "[[simulated:fail]]")})
        [ok_id] = await probe.submit({"adv-ok": small_doc(2)})
        states = await probe.wait_terminal([job_id, ok_id], timeout_s=30)
        events = await probe.events()
        [dead] = await list_dead_letters(probe.b.js)
        tasks = await probe.b.js.stream_info(subjects.TASKS_STREAM)
    assert states[ok_id].status is JobStatus.COMPLETED
    failed = states[job_id]
    assert failed.status is JobStatus.FAILED and failed.error
    assert dead.job_id == job_id and dead.deliveries == 3 and dead.reason in failed.error
    assert "max deliveries" in dead.reason
    assert decode(dead.data, TaskAssign).payload.job_id == job_id  # the original task
    assert tasks.state.messages == 0  # taken off the work queue
    kinds = Counter(e.kind for e in events if e.job_id == job_id)
    assert kinds[EventKind.TASK_RETRIED] == 3  # the worker never gave up by itself
    assert kinds[EventKind.TASK_DEAD_LETTERED] == 1 and kinds[EventKind.JOB_FAILED] == 1


@pytest.mark.timeout(150)
async def test_sigterm_finishes_in_flight_work_and_exits_zero(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="600", AGENTBUS_WORKER__CONCURRENCY="6")
    docs = {f"term-{i:03}": small_doc(i) for i in range(JOBS)}
    async with running_stack(tmp_path, nats_single.url, workers=3) as stack:
        victim = stack.by_role("worker")[0]
        async with Probe(nats_single.url) as probe:
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 5)

            await wait_in_flight(victim, at_least=3)
            signalled_at = datetime.now(UTC)
            victim.signal(signal.SIGTERM)
            code = await asyncio.to_thread(victim.wait, 30)
            assert code == 0
            await probe.wait_terminal(job_ids, timeout_s=90)
            redelivered_now = await probe.consumer_redelivered()
            outcome, events, _ = await measure(
                "worker-sigterm", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids),
            )  # fmt: skip
        mine = [e for e in events if e.agent_id == victim.agent_id]
        started = {(e.job_id, e.task_id) for e in mine if e.kind is EventKind.TASK_STARTED}
        finished = {(e.job_id, e.task_id) for e in mine if e.kind is EventKind.TASK_COMPLETED}
        kinds = [e.kind for e in mine]
        # work the victim had started before the signal and finished after it
        started_before = {
            (e.job_id, e.task_id)
            for e in mine
            if e.kind is EventKind.TASK_STARTED and e.ts < signalled_at
        }
        finished_after = {
            (e.job_id, e.task_id)
            for e in mine
            if e.kind is EventKind.TASK_COMPLETED and e.ts >= signalled_at
        }
        in_flight_at_term = started_before & finished_after
        outcome.extra["victim-tasks"] = len(finished)
        outcome.extra["in-flight-at-sigterm"] = len(in_flight_at_term)
        report(capsys, outcome)
        codes = await asyncio.to_thread(stack.stop)
    outcome.check()
    assert outcome.completed == JOBS
    assert started and started == finished, "the stopped worker left work unfinished"
    assert in_flight_at_term, "the worker had no work in flight when it got SIGTERM"
    assert outcome.redelivered == 0 and redelivered_now == 0, "finished work was redelivered"
    # it finished (and recorded) its work before it said it stopped
    stopped_at = kinds.index(EventKind.AGENT_STOPPED)
    assert EventKind.TASK_COMPLETED not in kinds[stopped_at:]
    assert EventKind.TASK_STARTED not in kinds[stopped_at:]
    assert set(codes.values()) == {0}, codes  # the rest of the stack stopped cleanly too


@pytest.mark.timeout(150)
async def test_nats_server_restart_under_load_loses_nothing(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="150")
    docs = {f"restart-{i:03}": small_doc(i) for i in range(JOBS)}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        job_ids = await probe.submit(docs)
        done = await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 4)
        port, store = nats_single.client_port, nats_single.store_dir
        await asyncio.to_thread(nats_single.restart)  # SIGTERM, then start on the same port/store
        assert (nats_single.client_port, nats_single.store_dir) == (port, store)
        await probe.wait_terminal(job_ids, timeout_s=90)

        async def all_ready() -> bool:
            return all(await asyncio.gather(*(asyncio.to_thread(p.ready) for p in stack.processes)))

        await until(all_ready, timeout_s=30, what="every service ready again")
        reconnects = {
            p.agent_id: await asyncio.to_thread(metric, p.url, "agentbus_nats_reconnects_total")
            for p in stack.processes
        }
        outcome, _events, _ = await measure(
            "server-restart", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
            extra={"done-before-restart": len(done)},
        )  # fmt: skip
    report(capsys, outcome)
    outcome.check()
    assert outcome.completed == JOBS
    assert all(n is not None and n >= 1 for n in reconnects.values()), reconnects


# --- a 3-node cluster ------------------------------------------------------------------


class NatsCluster:
    """Three nats-server processes on loopback, routed to each other, JetStream on each."""

    NAME = "agentbus-faults"

    def __init__(self, base: Path, *, size: int = 3) -> None:
        self.cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[EmbeddedNatsServer] = []
        for i in range(size):
            name = f"n{i + 1}"
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.cluster_ports) if j != i
            )
            conf = base / f"{name}.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"cluster {{\n"
                f'  name: "{self.NAME}"\n'
                f"  listen: 127.0.0.1:{self.cluster_ports[i]}\n"
                f"  routes: [{routes}]\n"
                f"}}\n"
            )
            self.nodes.append(
                EmbeddedNatsServer(store_dir=base / name, config_file=conf, server_name=name)
            )

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes if n.running)

    def node(self, name: str) -> EmbeddedNatsServer:
        return next(n for n in self.nodes if n.server_name == name)

    async def wait_jetstream(self, *, timeout_s: float = 30.0) -> None:
        """Until the cluster's JetStream answers (a meta leader is elected)."""
        nc = await nats.connect(self.url.split(","), connect_timeout=2, max_reconnect_attempts=-1)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    resp = await nc.request("$JS.API.INFO", b"", timeout=2)
                    info = json.loads(resp.data)
                    if "error" not in info:
                        return
                except (nats.errors.Error, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("JetStream cluster not ready")
                await asyncio.sleep(0.25)
        finally:
            await nc.close()


@pytest.mark.timeout(180)
async def test_cluster_node_killed_under_load_pipeline_continues(
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault_env(AGENTBUS_TOPOLOGY__REPLICAS="3", AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="100")
    cluster = NatsCluster(tmp_path / "cluster")
    await asyncio.to_thread(cluster.start)
    try:
        await cluster.wait_jetstream()
        url = cluster.url
        docs = {f"cluster-{i:03}": small_doc(i) for i in range(JOBS)}
        async with running_stack(tmp_path, url, workers=2) as stack, Probe(url) as probe:
            for name in subjects.ALL_STREAMS:
                info = await probe.b.js.stream_info(name)
                assert info.config.num_replicas == 3, name
            job_ids = await probe.submit(docs)
            await probe.wait_terminal(job_ids, timeout_s=60, until=lambda n: n >= JOBS // 4)
            # kill the node that leads the busiest stream
            info = await probe.b.js.stream_info(subjects.TASKS_STREAM)
            leader = info.cluster.leader if info.cluster else "n1"
            victim = cluster.node(leader or "n1")
            await asyncio.to_thread(victim.kill)
            await probe.wait_terminal(job_ids, timeout_s=120)
            outcome, _events, _ = await measure(
                "cluster-node-kill", probe, job_ids, database_url=archive_url(stack),
                submitted=len(job_ids), extra={"killed": f"{leader}(TASKS leader)"},
            )  # fmt: skip
            new_leader: list[str] = []

            async def leader_known() -> bool:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    after = await asyncio.wait_for(probe.b.js.stream_info(subjects.TASKS_STREAM), 3)
                    if after.cluster and after.cluster.leader:
                        new_leader.append(after.cluster.leader)
                return bool(new_leader)

            await until(leader_known, timeout_s=30, what="TASKS has a leader")
            outcome.extra["new-leader"] = new_leader[0]
        report(capsys, outcome)
        outcome.check()
        assert outcome.completed == JOBS
        assert outcome.extra["new-leader"] != leader
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.mark.timeout(150)
async def test_duplicate_results_change_nothing(
    nats_single: EmbeddedNatsServer,
    tmp_path: Path,
    fault_env: Callable[..., dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every result is delivered to the orchestrator twice while the run goes on (a copy
    under a new message id, which JetStream cannot deduplicate), and then the whole
    RESULTS stream once more after the run: job states, events and archive stay exact."""
    fault_env(
        AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS="20",
        AGENTBUS_ORCHESTRATOR__CHUNK_CHARS="400",
        AGENTBUS_ORCHESTRATOR__CHUNK_SUMMARY_CHARS="100",
        AGENTBUS_ORCHESTRATOR__SUMMARY_CHARS="150",
    )
    docs = {f"dup-multi-{i:02}": long_doc(i, paragraphs=4) for i in range(20)}
    docs |= {f"dup-{i:03}": small_doc(i) for i in range(JOBS - len(docs))}
    async with (
        running_stack(tmp_path, nats_single.url, workers=2) as stack,
        Probe(nats_single.url) as probe,
    ):
        copies = 0

        async def duplicate(msg: Any) -> None:
            nonlocal copies
            hdrs = dict(msg.headers or {})
            original = hdrs.pop(MSG_ID_HEADER, "x")
            if original.startswith("dup-copy:"):
                return
            await probe.b.publish_raw(
                msg.subject, msg.data, msg_id=f"dup-copy:{original}",
                stream=subjects.RESULTS_STREAM, headers=hdrs,
            )  # fmt: skip
            copies += 1

        sub = await probe.b.nc.subscribe("results.>", cb=duplicate)
        job_ids = await probe.submit(docs)
        await probe.wait_terminal(job_ids, timeout_s=90)
        await asyncio.sleep(1.0)  # copies in flight are handled
        await sub.unsubscribe()
        first, events, states = await measure(
            "duplicate-results", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
        )  # fmt: skip
        kv = await probe.b.kv(subjects.JOBS_BUCKET)
        revisions = {j: (await kv.get(j)).revision for j in job_ids}

        # after the work was done: every result in the stream, delivered again
        info = await probe.b.js.stream_info(subjects.RESULTS_STREAM)
        late = 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await probe.b.js.get_msg(subjects.RESULTS_STREAM, seq)
            hdrs = {k: v for k, v in (m.headers or {}).items() if k != MSG_ID_HEADER}
            await probe.b.publish_raw(
                m.subject or "", m.data or b"", msg_id=f"late-copy:{seq}",
                stream=subjects.RESULTS_STREAM, headers=hdrs,
            )  # fmt: skip
            late += 1

        async def drained() -> bool:
            ci = await probe.b.js.consumer_info(
                subjects.RESULTS_STREAM, subjects.ORCHESTRATOR_RESULTS_CONSUMER
            )
            return bool(ci.num_pending == 0 and ci.num_ack_pending == 0)

        await until(drained, timeout_s=60, what="orchestrator consumed the late copies")
        after_revisions = {j: (await kv.get(j)).revision for j in job_ids}
        outcome, events_after, states_after = await measure(
            "duplicate-results", probe, job_ids, database_url=archive_url(stack),
            submitted=len(job_ids),
            extra={"copies-during-run": copies, "copies-after-run": late},
        )  # fmt: skip
    report(capsys, outcome)
    first.check()
    outcome.check()
    assert outcome.completed == JOBS and copies > JOBS and late > JOBS
    assert after_revisions == revisions, "a late duplicate changed a job's state"
    assert [e.event_id for e in events_after] == [e.event_id for e in events]
    for job_id in job_ids:
        before, after = states[job_id], states_after[job_id]
        assert before is not None and after is not None
        assert after.model_dump() == before.model_dump()
        done = {
            e.task_id for e in events if e.job_id == job_id and e.kind is EventKind.TASK_COMPLETED
        }
        assert after.tasks_done_total == len(done), job_id  # each result counted once
    multi = [states_after[j] for j in job_ids if j.startswith("dup-multi-")]
    assert all(s is not None and s.chunks == 4 and s.level >= 1 for s in multi)


def test_summary_line_format() -> None:
    """The scenario line carries every count the suite promises, in a stable format."""
    o = Outcome(
        scenario="x", accepted=3, completed=2, dead_lettered=1, failed_without_reason=0,
        unfinished=0, emitted=10, archived=10, duplicates=0, lost=0, redelivered=1, resent=2,
        extra={"k": "v"},
    )  # fmt: skip
    assert re.fullmatch(
        r"\[faults\] x +jobs accepted=3 completed=2 dead-lettered=1 \(\+unexplained failed=0 "
        r"unfinished=0\) \| events emitted=10 archived=10 duplicates=0 lost=0 resent=2 \| "
        r"task redeliveries=1 k=v",
        o.line(),
    )
    o.check()


async def test_simulated_fault_markers(tmp_path: Path) -> None:
    """The markers the scenarios rely on do what they say (pure backend, no bus)."""
    from agentbus_summarize_worker.backends.simulated import Faults, SimulatedSummarizer
    from agentbus_summarize_worker.errors import SummarizerError

    sim = SimulatedSummarizer(latency_ms=0)
    flag = tmp_path / "down"
    flag.touch()
    assert Faults.parse(f"a [[simulated:fail-while={flag}]] b").fail_while == flag
    with pytest.raises(SummarizerError, match="fail-while") as info:
        await sim.summarize(f"Text. [[simulated:fail-while={flag}]]", max_chars=100)
    assert info.value.retryable
    flag.unlink()
    ok = await sim.summarize(f"Text. [[simulated:fail-while={flag}]]", max_chars=100)
    assert ok.text.startswith("Text.")
    with pytest.raises(SummarizerError, match="marker fail\\)") as info:
        await sim.summarize("Text. [[simulated:fail]]", max_chars=100)
    assert info.value.retryable
    with pytest.raises(SummarizerError, match="permanent") as info:
        await sim.summarize("Text. [[simulated:fatal]]", max_chars=100)
    assert not info.value.retryable
    assert Faults.parse("[[simulated:latency_ms=2500]]").latency_ms == 2500.0
    assert Faults.parse("no markers").latency_ms is None
    for bad in (
        "[[simulated:latency_ms=soon]]",
        "[[simulated:bogus]]",
        "[[simulated:fail-while=]]",
    ):
        with pytest.raises(ValueError, match="marker"):
            Faults.parse(bad)
        with pytest.raises(SummarizerError, match="bad fault marker") as info:
            await sim.summarize(f"Text. {bad}", max_chars=100)
        assert not info.value.retryable
