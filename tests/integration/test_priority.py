"""Priorities against a real nats-server: a high-priority job overtakes a backlog of
normal tasks (map and reduce on the high consumer), a low-priority job still progresses,
and provisioning an older topology (one workers consumer) adds the priority ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from agentbus.bus.core import Bus
from agentbus.bus.priority_pull import PriorityConsumerLoop
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.messages import AgentEvent, EventKind, JobStatus
from agentbus.contract.priority import PRIORITIES, Priority, task_consumer
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, make_settings, stream_agent_events, with_sections

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BACKLOG_CHUNKS = 120


def _document(tag: str, paragraphs: int) -> str:
    return "\n\n".join(
        f"{tag} paragraph {i} describes harbour {i} and its ships. Trade at harbour {i} "
        f"grew every year, and the town around it grew with it, street by street."
        for i in range(paragraphs)
    )


def _pipeline_settings(settings: Settings) -> Settings:
    return with_sections(
        settings,
        orchestrator={"chunk_chars": 300, "chunk_summary_chars": 60, "summary_chars": 200},
        summarizer={"backend": "simulated", "simulated_latency_ms": 25.0},
        worker={"concurrency": 2},
    )


def _starts(events: list[AgentEvent]) -> list[str]:
    """Job ids in the order their tasks started (one entry per task.started event)."""
    return [e.job_id or "" for e in events if e.kind == EventKind.TASK_STARTED]


async def test_high_overtakes_a_normal_backlog_and_low_progresses(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = _pipeline_settings(settings)
    await running.start(Orchestrator, s, "orch-1")
    worker = await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with AgentBusClient(s.nats) as client:
        backlog = await client.submit(_document("Normal", BACKLOG_CHUNKS), title="backlog")
        # wait for the backlog's tasks to be queued, and the worker busy with them
        for _ in range(400):
            state = await client.status(backlog)
            if state is not None and state.chunks >= BACKLOG_CHUNKS // 2:
                break
            await asyncio.sleep(0.02)
        assert state is not None and state.priority is Priority.NORMAL
        low = await client.submit(_document("Low", 6), title="low", priority="low")
        high = await client.submit(_document("High", 8), title="high", priority=Priority.HIGH)
        high_state = await client.wait(high, timeout_s=60)
        backlog_then = await client.status(backlog)
        low_state = await client.wait(low, timeout_s=60)
        low_done_backlog = await client.status(backlog)
        done = await client.wait(backlog, timeout_s=90)
    assert high_state.status is JobStatus.COMPLETED, high_state.error
    assert high_state.priority is Priority.HIGH and high_state.level >= 1  # it had a reduce
    assert low_state.status is JobStatus.COMPLETED and done.status is JobStatus.COMPLETED
    # the backlog was still running when the high job (map and reduce) had finished ...
    assert backlog_then is not None and backlog_then.status is JobStatus.RUNNING
    # ... and so when the low one had: low work progressed during the backlog
    assert low_done_backlog is not None and low_done_backlog.status is JobStatus.RUNNING

    starts = _starts(await stream_agent_events(bus))
    first_high = starts.index(high)
    last_high = len(starts) - 1 - starts[::-1].index(high)
    backlog_left = starts[last_high + 1 :].count(backlog)
    # every high task (map and reduce) started before most of the remaining backlog: at
    # most 1 normal start per 4 high ones (the anti-starvation share) plus the reduce wait
    between = starts[first_high:last_high].count(backlog)
    assert between <= high_state.tasks_done_total // 4 + 2 * s.worker.concurrency + 2, between
    assert backlog_left > BACKLOG_CHUNKS // 4, backlog_left
    # the consumers of each priority served exactly their job's tasks
    loop = worker.loops[0]
    assert isinstance(loop, PriorityConsumerLoop)
    assert loop.pulled[Priority.HIGH] == high_state.tasks_done_total
    assert loop.pulled[Priority.LOW] == low_state.tasks_done_total


async def test_provision_adds_priority_consumers_to_an_older_topology(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(store_dir=tmp_path / "js")
    server.start()
    try:
        s = make_settings(server.url, tmp_path)
        b = await Bus.connect(s.nats, agent_id="old", service="test")
        try:
            # the topology of a release before priorities: one subject, one consumer
            await b.js.add_stream(
                StreamConfig(
                    name=subjects.TASKS_STREAM,
                    subjects=[subjects.TASKS_SUBJECTS],
                    retention=RetentionPolicy.WORK_QUEUE,
                )
            )
            await b.js.add_consumer(
                subjects.TASKS_STREAM,
                ConsumerConfig(
                    durable_name=subjects.WORKERS_CONSUMER,
                    filter_subject=subjects.task_assign("summarize"),
                ),
            )
            await b.js.publish(subjects.task_assign("summarize"), b"queued-before-upgrade")
            report = await provision(b.js, s, skills=["summarize"])
            assert f"stream {subjects.TASKS_STREAM}" in report.updated
            for p in (Priority.HIGH, Priority.LOW):
                assert f"consumer TASKS/{task_consumer('summarize', p)}" in report.created
            info = await b.js.stream_info(subjects.TASKS_STREAM)
            assert info.config.subjects == [
                subjects.TASKS_SUBJECTS,
                subjects.TASKS_PRIORITY_SUBJECTS,
                subjects.TASKS_TENANT_SUBJECTS,  # (tenants: agentbus.contract.tenants)
                subjects.TASKS_SLOT_SUBJECTS,
            ]
            assert info.state.messages == 1  # the queued task is kept
            for p in PRIORITIES:
                c = await b.js.consumer_info(subjects.TASKS_STREAM, task_consumer("summarize", p))
                assert c.config.filter_subject == (
                    "tasks.summarize.assign" + ("" if p is Priority.NORMAL else f".{p.value}")
                )
            normal = await b.js.consumer_info(subjects.TASKS_STREAM, subjects.WORKERS_CONSUMER)
            assert normal.num_pending == 1
            again = await provision(b.js, s, skills=["summarize"])
            assert again.created == [] and again.updated == []
        finally:
            await b.close()
    finally:
        server.stop()
