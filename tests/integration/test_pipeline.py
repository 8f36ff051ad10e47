"""The pipeline in-process against a real nats-server: topology, one job end to end."""

from __future__ import annotations

import pytest

from agentbus import subjects
from agentbus.bus import Bus
from agentbus.client import AgentBusClient
from agentbus.messages import JobStatus
from agentbus.settings import Settings
from agentbus.topology import provision
from agentbus.worker import TaskWorker
from event_archiver import EventArchiver
from orchestrator import Orchestrator
from summarize_worker import SummarizeSkill

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


async def test_many_chunk_job_completes(bus: Bus, settings: Settings, running) -> None:  # type: ignore[no-untyped-def]
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
