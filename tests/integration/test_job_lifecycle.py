"""Job lifecycle against a real nats-server: job ids name one document, deadlines and
the no-progress timeout fail stuck jobs with the reason, and the results of one large job
racing over three orchestrator replicas are each recorded exactly once."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.chunking import chunk_text
from agentbus.contract.errors import JobExistsError
from agentbus.contract.headers import DLQ_HEADER_REASON
from agentbus.contract.messages import EventKind, JobState, JobStatus, JobSubmit
from agentbus.contract.settings import Settings
from agentbus.observability import metrics
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator, lifecycle
from agentbus_orchestrator.lifecycle import MAX_RECHECK_S, recorded_indices
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, dlq_messages, stream_agent_events, with_sections
from tests.documents import make_document, prose_document

pytestmark = pytest.mark.integration


async def test_job_id_names_one_document(bus: Bus, settings: Settings, running: Running) -> None:
    await running.start(Orchestrator, settings, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-1")
    first = "The first document talks about harbours. Ships call there every day."
    other = "A second, different document about mountains. Snow falls in winter."
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit(first, job_id="named-job")
        done = await client.wait(job_id, timeout_s=30)
        assert done.status is JobStatus.COMPLETED and done.document_sha256
        # the same document again: the same job, nothing new runs
        assert await client.submit(first, job_id="named-job") == "named-job"
        with pytest.raises(JobExistsError, match="named-job exists with a different document"):
            await client.submit(other, job_id="named-job")
        again = await client.status("named-job")
        assert again is not None and again.summary == done.summary
        assert again.tasks_done_total == done.tasks_done_total == 1

        # two racing submissions (the client's check passed for both): the orchestrator
        # refuses the second document with the reason, and the first job is untouched
        racing = JobSubmit(job_id="named-job", text=other, document_sha256="0" * 64)
        await bus.publish(
            subjects.JOBS_SUBJECT, racing, msg_id="named-job-racing", stream=subjects.JOBS_STREAM
        )
        for _ in range(100):
            dead = [h for s, h, _d in await dlq_messages(bus) if s == subjects.dlq_subject("JOBS")]
            if dead:
                break
            await asyncio.sleep(0.05)
        assert len(dead) == 1 and "exists with a different document" in dead[0][DLQ_HEADER_REASON]
        after = await client.status("named-job")
        assert after is not None and after.summary == done.summary


async def test_deadline_fails_a_job_nobody_works_on(
    bus: Bus, settings: Settings, running: Running
) -> None:
    before = metrics.JOBS_FAILED.labels("orchestrator", "timeout")._value.get()
    await running.start(Orchestrator, settings, "orch-1")
    async with AgentBusClient(settings.nats) as client:
        # a skill no worker serves: its task waits on TASKS forever
        job_id = await client.submit(
            "Nobody summarizes this. It waits.", skill="nobody", timeout_s=2.0
        )
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.FAILED and state.failed_by == "timeout"
    assert state.error is not None and "deadline passed: not finished within 2s" in state.error
    events = [e for e in await stream_agent_events(bus) if e.job_id == job_id]
    failed = [e for e in events if e.kind is EventKind.JOB_FAILED]
    assert len(failed) == 1 and "deadline" in str(failed[0].data["reason"])
    after = metrics.JOBS_FAILED.labels("orchestrator", "timeout")._value.get()
    assert after == before + 1


async def test_no_progress_timeout_fails_a_stuck_job(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = with_sections(settings, orchestrator={"no_progress_timeout_s": 2.0, "job_timeout_s": 0})
    await running.start(Orchestrator, s, "orch-1")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit("Stuck. Nobody serves this skill.", skill="nobody")
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.FAILED and state.failed_by == "timeout"
    assert state.error is not None and "no progress for" in state.error
    assert "0/1 task(s) done" in state.error


async def test_finished_jobs_end_their_timers(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = with_sections(settings, orchestrator={"no_progress_timeout_s": 1.0})
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with AgentBusClient(s.nats) as client:
        ids = [await client.submit(f"Document {i}. It is short.") for i in range(5)]
        states = [await client.wait(j, timeout_s=30) for j in ids]
    assert {st.status for st in states} == {JobStatus.COMPLETED}
    # every job's timer (its message) is acked once the job has ended: nothing left
    for _ in range(100):
        info = await bus.js.consumer_info(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    for j in ids:  # and none of them was failed by it
        st = await AgentBusClient(s.nats).connect()
        try:
            final = await st.status(j)
        finally:
            await st.close()
        assert final is not None and final.status is JobStatus.COMPLETED


@pytest.mark.timeout(120)
async def test_an_ended_jobs_lost_timer_ack_is_settled_by_its_next_check(
    bus: Bus, settings: Settings, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack that ends a job's timer can be lost after the server confirmed it (a
    consumer leader gone before it replicated it): the job's message then comes back at
    its next check, at most MAX_RECHECK_S away, not at the default 900 s no-progress
    deadline, and is acked because the job has ended."""
    orch = cast(Orchestrator, await running.start(Orchestrator, settings, "orch-lost-ack"))
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-1")

    async def lost(_state: JobState) -> None:
        return None

    monkeypatch.setattr(orch.collector, "end_timer", lost)
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit("One short document. It ends soon.")
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED
    info = await bus.js.consumer_info(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
    assert info.num_ack_pending == 1  # the timer, its ack lost
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_RECHECK_S + 30
    while info.num_ack_pending and loop.time() < deadline:
        await asyncio.sleep(0.5)
        info = await bus.js.consumer_info(subjects.JOBS_STREAM, subjects.ORCHESTRATOR_CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    final = await AgentBusClient(settings.nats).connect()
    try:
        after = await final.status(job_id)
    finally:
        await final.close()
    assert after is not None and after.status is JobStatus.COMPLETED


@pytest.mark.timeout(240)
async def test_three_orchestrators_record_every_result_of_one_job_once(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """~900 results of one job land on three replicas at once: their writes to the one
    job state conflict, are batched and retried, and every task is recorded exactly once
    (the old per-result compare-and-set gave up after 50 conflicts and left the job
    running)."""
    s = with_sections(
        settings,
        orchestrator={"chunk_chars": 1000, "chunk_summary_chars": 100, "summary_chars": 400},
        worker={"concurrency": 32},
        summarizer={"backend": "simulated", "simulated_latency_ms": 0.0},
    )
    orchestrators = [
        cast(Orchestrator, await running.start(Orchestrator, s, f"orch-{i}")) for i in (1, 2, 3)
    ]
    for i in (1, 2):
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, f"worker-{i}")
    text = prose_document(3, 900_000)
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text, title="contended")
        state = await client.wait(job_id, timeout_s=180)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.chunks >= 800
    assert len(state.model_dump_json()) < 4096
    events = {e.event_id: e for e in await stream_agent_events(bus)}.values()
    reduce_tasks = sum(
        int(e.data["tasks"])
        for e in events
        if e.job_id == job_id and e.kind is EventKind.JOB_REDUCING
    )
    assert state.tasks_done_total == state.chunks + reduce_tasks
    recorded = [o.collector.results for o in orchestrators]
    assert all(n > 0 for n in recorded), recorded  # every replica took results
    writes = sum(o.collector.writes for o in orchestrators)
    assert writes < sum(recorded), (writes, recorded)  # batched: fewer writes than results
    assert list(recorded_indices(state)) == [0]  # the last level: one task, recorded


async def test_many_small_jobs_still_complete_with_batching(
    bus: Bus, settings: Settings, running: Running
) -> None:
    import random

    await running.start(Orchestrator, settings, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-1")
    rng = random.Random(3)
    async with AgentBusClient(settings.nats) as client:
        ids = [await client.submit(make_document(rng, 5 + i)) for i in range(40)]
        states = await asyncio.gather(*(client.wait(j, timeout_s=60) for j in ids))
    assert [st.status for st in states] == [JobStatus.COMPLETED] * 40
    assert all(st.tasks_done_total >= 1 and st.summary for st in states)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("paragraphs", "published"), [(1, 0), (6, 0), (6, 3)])
async def test_an_intake_that_died_before_publishing_every_task_is_redone(
    bus: Bus,
    settings: Settings,
    running: Running,
    monkeypatch: pytest.MonkeyPatch,
    paragraphs: int,
    published: int,
) -> None:
    """An orchestrator that dies between writing a job's state and publishing all of its
    tasks (none, or half of them) leaves the job message unacked: it comes back at
    ack_wait, and the next orchestrator must redo the intake (publish what is missing),
    not take it for the job's deadline check, which would leave the job running until the
    900 s no-progress timeout. No task runs twice: a task published again is dropped."""
    # max_deliver 1: the redone intake is not an intake delivery to count
    s = with_sections(settings, orchestrator={"chunk_chars": 400}, topology={"max_deliver": 1})
    victim = cast(Orchestrator, await running.start(Orchestrator, s, "orch-dies"))
    victim_bus = running.items[-1][1]
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    reached = asyncio.Event()
    publish_level = victim.collector.publish_level

    async def dies_here(
        job_id: str, skill: str, level: int, chunks: list[str], *args: object, **kw: object
    ) -> None:
        await publish_level(job_id, skill, level, chunks[:published], *args, **kw)  # type: ignore[arg-type]
        reached.set()
        await asyncio.Event().wait()  # the process is gone: no publish, no ack, no nak

    monkeypatch.setattr(victim.collector, "publish_level", dies_here)
    text = "\n\n".join(
        f"Section {i} of the estuary report. " + "The tide rose over the levee. " * 8
        for i in range(paragraphs)
    )
    assert len(chunk_text(text, max_chars=400)) == paragraphs
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text)
        await asyncio.wait_for(reached.wait(), timeout=30)
        created = await client.status(job_id)
        assert created is not None and created.status is JobStatus.RUNNING
        assert created.publishing
        await victim_bus.nc.close()  # its connection gone with it: no in_progress either
        await running.start(Orchestrator, s, "orch-takes-over")
        state = await client.wait(job_id, timeout_s=60)
    assert state.status is JobStatus.COMPLETED and state.summary, state
    assert state.chunks == paragraphs and not state.publishing
    events = [e for e in await stream_agent_events(bus) if e.job_id == job_id]
    started = [e.task_id for e in events if e.kind is EventKind.TASK_STARTED]
    map_tasks = [t for t in started if t is not None and t.startswith("0-")]
    assert sorted(map_tasks) == sorted(f"0-{i}" for i in range(paragraphs))  # each once
    # the redone intake emits its events again under the same ids (the archive's key)
    ids = {e.kind: {x.event_id for x in events if x.kind is e.kind} for e in events}
    assert ids[EventKind.JOB_ACCEPTED] == {f"{job_id}-accepted"}
    assert ids[EventKind.JOB_CHUNKED] == {f"{job_id}-chunked"}
    assert len(ids[EventKind.JOB_COMPLETED]) == 1


@pytest.mark.timeout(90)
async def test_a_one_chunk_job_running_past_its_first_check_runs_its_task_once(
    bus: Bus, settings: Settings, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of one chunk skips the `published` record, so its first deadline check (here
    at 1 s, not 30 s) finds it `publishing`: the intake is redone - with max_deliver 1,
    not counted as an intake delivery - its task published again is dropped as a
    duplicate (it runs once), its intake events are not emitted again, and the record
    is written; the job completes, no longer `publishing`."""
    monkeypatch.setattr(lifecycle, "MAX_RECHECK_S", 1.0)
    s = with_sections(
        settings,
        summarizer={"backend": "simulated", "simulated_latency_ms": 4000},
        topology={"max_deliver": 1},
    )
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit("A slow one-chunk document. It takes four seconds.")
        await asyncio.sleep(2.5)  # past the first check, the task still running
        middle = await client.status(job_id)
        state = await client.wait(job_id, timeout_s=60)
    assert middle is not None and middle.status is JobStatus.RUNNING
    assert not middle.publishing  # recorded by the redone intake
    assert state.status is JobStatus.COMPLETED and state.summary and state.tasks_done_total == 1
    events = [e for e in await stream_agent_events(bus) if e.job_id == job_id]
    assert [e.task_id for e in events if e.kind is EventKind.TASK_STARTED] == ["0-0"]
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.JOB_ACCEPTED) == kinds.count(EventKind.JOB_CHUNKED) == 1
