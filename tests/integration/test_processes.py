"""Services as real processes against a real nats-server: work is shared by worker
replicas, the orchestrator survives a restart mid-job, garbage goes to the DLQ."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract import subjects
from agentbus.contract.headers import DLQ_HEADER_REASON
from agentbus.contract.messages import EventKind, JobStatus
from agentbus.contract.settings import Settings
from agentbus.dev.embedded import EmbeddedNatsServer
from agentbus.dev.stack import Stack
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, dlq_messages, stream_agent_events

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
async def test_work_is_spread_across_three_worker_processes(
    nats_server: EmbeddedNatsServer, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = {
        "AGENTBUS_SUMMARIZER__BACKEND": "simulated",
        "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS": "100",
        "AGENTBUS_WORKER__CONCURRENCY": "2",
    }
    stack = Stack(data_dir=tmp_path / "stack", workers=3, nats_url=nats_server.url, env=env)
    await asyncio.to_thread(stack.start)
    try:
        async with AgentBusClient(settings.nats) as client:
            ids = [
                await client.submit(f"Document number {i}. It has two sentences.")
                for i in range(30)
            ]
            states = await asyncio.gather(*(client.wait(j, timeout_s=60) for j in ids))
        assert [s.status for s in states] == [JobStatus.COMPLETED] * 30
        # a worker's task.completed goes out beside its result (not before it), so the
        # last events can land just after the jobs complete
        for _ in range(100):
            done = Counter(
                e.agent_id
                for e in await stream_agent_events(bus)
                if e.kind is EventKind.TASK_COMPLETED
            )
            if sum(done.values()) >= 30:
                break
            await asyncio.sleep(0.1)
        assert sum(done.values()) == 30
        assert set(done) == {"worker-1", "worker-2", "worker-3"}, done
        assert min(done.values()) >= 3, done  # each replica did a real share
    finally:
        codes = await asyncio.to_thread(stack.stop)
    assert all(code == 0 for code in codes.values()), codes


@pytest.mark.timeout(120)
async def test_job_survives_orchestrator_restart_mid_job(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = settings.model_copy(
        update={
            "orchestrator": settings.orchestrator.model_copy(
                update={"chunk_chars": 300, "chunk_summary_chars": 100, "summary_chars": 400}
            ),
            "summarizer": settings.summarizer.model_copy(
                update={"backend": "simulated", "simulated_latency_ms": 50.0}
            ),
            "worker": settings.worker.model_copy(update={"concurrency": 2}),
        }
    )
    orch = await running.start(Orchestrator, s, "orch-a")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-a")
    text = "\n\n".join(
        f"Section {i} explains point {i} in some detail. It matters." for i in range(60)
    )
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text)
        # wait until the job is part-way through its map step, then stop the orchestrator
        for _ in range(400):
            st = await client.status(job_id)
            if st is not None and 3 <= st.level_done < st.level_tasks - 3:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("job never got part-way")
        await running.stop(orch, grace_s=0.1)
        paused = await client.status(job_id)
        assert paused is not None and paused.status is JobStatus.RUNNING
        await asyncio.sleep(1.0)  # results pile up on RESULTS while no orchestrator runs
        await running.start(Orchestrator, s, "orch-b")
        final = await client.wait(job_id, timeout_s=90)
    assert final.status is JobStatus.COMPLETED, final.error
    assert final.chunks == paused.chunks
    assert final.summary and len(final.summary) <= 400
    events = await stream_agent_events(bus)
    completed = [e for e in events if e.kind is EventKind.JOB_COMPLETED and e.job_id == job_id]
    assert len(completed) == 1
    map_done = {
        e.task_id
        for e in events
        if e.kind is EventKind.TASK_COMPLETED
        and e.job_id == job_id
        and e.task_id
        and e.task_id.startswith("0-")
    }
    assert len(map_done) == final.chunks


@pytest.mark.timeout(90)
async def test_garbage_is_dead_lettered_and_later_jobs_complete(
    bus: Bus, settings: Settings, running: Running
) -> None:
    await running.start(Orchestrator, settings, "orch-g")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-g")
    garbage = [b"not json", b'{"msg_type": "job.submit"}', b"\xff\xfe\x00", b"[" * 5000]
    for i, data in enumerate(garbage):
        await bus.publish_raw(
            subjects.JOBS_SUBJECT, data, msg_id=f"bad-job-{i}", stream=subjects.JOBS_STREAM
        )
        await bus.publish_raw(
            subjects.task_assign("summarize"),
            data,
            msg_id=f"bad-task-{i}",
            stream=subjects.TASKS_STREAM,
        )
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit(
            "A valid document. It arrives after the garbage. It must still complete."
        )
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED
    dead = await dlq_messages(bus)
    by_subject = Counter(subject for subject, _h, _d in dead)
    assert by_subject == {"dlq.jobs": len(garbage), "dlq.tasks": len(garbage)}
    assert all(h.get(DLQ_HEADER_REASON, "").startswith("undecodable") for _s, h, _d in dead)
    assert sorted(d for _s, _h, d in dead) == sorted(garbage * 2)  # original payloads kept
