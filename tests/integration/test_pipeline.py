"""The pipeline in-process against a real nats-server: topology, one job end to end."""

from __future__ import annotations

import asyncio
import random
from typing import cast

import pytest
from nats.aio.msg import Msg

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import EventKind, JobStatus
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_event_archiver import EventArchiver
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, stream_agent_events
from tests.documents import make_document

pytestmark = pytest.mark.integration


async def test_topology_is_idempotent(bus: Bus, settings: Settings) -> None:
    again = await provision(bus.js, settings)
    assert again.created == [] and again.updated == []
    names = {s.config.name for s in await bus.js.streams_info()}
    assert set(subjects.ALL_STREAMS) <= names
    info = await bus.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
    assert info.config.filter_subject == "tasks.summarize.assign"
    third = await provision(bus.js, settings)
    assert len(third.unchanged) == len(again.unchanged)


async def test_many_chunk_job_completes(bus: Bus, settings: Settings, running: Running) -> None:
    s = settings.model_copy(
        update={
            "orchestrator": settings.orchestrator.model_copy(
                update={"chunk_chars": 400, "chunk_summary_chars": 120, "summary_chars": 300}
            )
        }
    )
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    await running.start(EventArchiver, s, "archiver-1")
    paragraphs = [
        f"Paragraph {i} talks about river number {i}. The river floods every spring. "
        f"Farmers along river {i} plant rice after the flood recedes."
        for i in range(40)
    ]
    text = "\n\n".join(paragraphs)
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text, title="rivers")
        state = await client.wait(job_id, timeout_s=60)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.chunks >= 10
    assert state.level >= 1  # at least one reduce step ran
    assert state.summary and 0 < len(state.summary) <= 300
    assert "river" in state.summary.lower()


class CountingOrchestrator(Orchestrator):
    """Counts the results this replica handled."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.results = 0

    async def handle_result(self, msg: Msg) -> None:
        self.results += 1
        await super().handle_result(msg)


async def test_two_orchestrators_share_multi_chunk_jobs(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """Results of one job land on both replicas, so each one's remembered state goes stale
    under the other's writes: every stale compare-and-set must re-read, never lose or
    double-count a task."""
    s = settings.model_copy(
        update={
            "orchestrator": settings.orchestrator.model_copy(
                update={"chunk_chars": 300, "chunk_summary_chars": 100, "summary_chars": 300}
            ),
            "worker": settings.worker.model_copy(update={"concurrency": 8}),
        }
    )
    orchestrators = [
        cast(CountingOrchestrator, await running.start(CountingOrchestrator, s, f"orch-{i}"))
        for i in (1, 2)
    ]
    for i in (1, 2):
        await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, f"worker-{i}")
    rng = random.Random(7)
    docs = [make_document(rng, 40 + 10 * i) for i in range(8)]
    async with AgentBusClient(s.nats) as client:
        ids = [await client.submit(d) for d in docs]
        states = [await client.wait(j, timeout_s=60) for j in ids]
    assert [st.status for st in states] == [JobStatus.COMPLETED] * len(docs)
    assert all(o.results > 0 for o in orchestrators), [o.results for o in orchestrators]
    in_order = await stream_agent_events(bus)
    events = {e.event_id: e for e in in_order}.values()
    for st in states:
        # a job's record begins with its intake: stored before any of its tasks existed
        kinds = [e.kind for e in in_order if e.job_id == st.job_id]
        first_task = min(i for i, k in enumerate(kinds) if k.value.startswith("task."))
        assert kinds.index(EventKind.JOB_ACCEPTED) < kinds.index(EventKind.JOB_CHUNKED)
        assert kinds.index(EventKind.JOB_CHUNKED) < first_task, kinds[:5]
        reduce_tasks = sum(
            int(e.data["tasks"])
            for e in events
            if e.job_id == st.job_id and e.kind is EventKind.JOB_REDUCING
        )
        assert st.chunks >= 5 and st.level >= 1
        # every map and reduce task counted exactly once
        assert st.tasks_done_total == st.chunks + reduce_tasks, st


async def test_a_job_record_begins_with_its_intake_even_when_events_are_slow(
    bus: Bus, settings: Settings, running: Running
) -> None:
    """The intake events are stored before any task exists, so a fast worker's events can
    never come first, and the job cannot end while its intake is still being recorded."""
    orch = await running.start(Orchestrator, settings, "orch-slow-events")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-fast")
    assert orch.bus is not None
    emitter = orch.bus._emitter
    publish = emitter._publish_raw

    async def slow(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(0.5)  # an event store slower than the whole job
        return await publish(*args, **kwargs)

    emitter._publish_raw = slow
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit(make_document(random.Random(3), 6), title="slow events")
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED, state.error
    kinds = [e.kind for e in await stream_agent_events(bus) if e.job_id == job_id]
    assert kinds[:2] == [EventKind.JOB_ACCEPTED, EventKind.JOB_CHUNKED], kinds
    assert EventKind.TASK_STARTED in kinds
