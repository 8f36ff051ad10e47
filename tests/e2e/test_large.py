"""Documents of megabytes through `agentbus up` at default settings (the `large` tier):
a 5 MB prose document and a 2 MB single word with 3 workers; one 13 MB job shared by 3
orchestrator replicas, every task recorded once, and its whole history (over 5,000
events) read back through the paged `rpc.history`."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import AgentEvent, EventKind, JobState, JobStatus
from agentbus.contract.settings import NatsSettings
from tests.conftest import stream_agent_events
from tests.documents import prose_document, single_word
from tests.e2e.upstack import agentbus_up

pytestmark = [pytest.mark.large, pytest.mark.timeout(600)]


async def _history(client: AgentBusClient, job_id: str, *, events: int) -> list[AgentEvent]:
    """The job's archived history once it holds `events` events (the archive trails)."""
    history: list[AgentEvent] = []
    for _ in range(300):
        history = await client.history(job_id)
        if len(history) >= events:
            return history
        await asyncio.sleep(0.2)
    return history


async def _tasks_recorded_once(url: str, state: JobState) -> list[AgentEvent]:
    """Every map and reduce task of the job counted exactly once in its state, and done
    (task.completed) exactly once in its events; returns the job's events. A worker's
    task.completed goes out beside its result, so the last ones can land just after the
    job completes, and so can the job's own job.completed (emitted after the state write
    that `wait` sees): the stream is read until they are all there (or 20 s passed)."""
    events: list[AgentEvent] = []
    for _ in range(100):
        events = await _job_events(url, state.job_id)
        done = Counter(e.task_id for e in events if e.kind is EventKind.TASK_COMPLETED)
        ended = any(e.kind is EventKind.JOB_COMPLETED for e in events)
        if ended and len(done) >= state.tasks_done_total:
            break
        await asyncio.sleep(0.2)
    reduce_tasks = sum(int(e.data["tasks"]) for e in events if e.kind is EventKind.JOB_REDUCING)
    assert state.tasks_done_total == state.chunks + reduce_tasks, state
    assert len(done) == state.tasks_done_total and set(done.values()) == {1}
    return events


async def _job_events(url: str, job_id: str) -> list[AgentEvent]:
    bus = await Bus.connect(NatsSettings(url=url), agent_id="large-check", service="test")
    try:
        unique = {e.event_id: e for e in await stream_agent_events(bus) if e.job_id == job_id}
        return list(unique.values())
    finally:
        await bus.close()


def test_5mb_prose_and_2mb_word_complete_at_defaults(tmp_path: Path) -> None:
    prose = prose_document(5, 5_000_000)
    word = single_word(2_000_000)

    async def run(url: str) -> None:
        async with AgentBusClient(url) as client:
            ids = [
                await client.submit(prose, title="5 MB prose"),
                await client.submit(word, title="2 MB word"),
            ]
            states = await asyncio.gather(*(client.wait(j, timeout_s=400) for j in ids))
        for st in states:
            assert st.status is JobStatus.COMPLETED, st.error
            assert st.summary and len(st.summary) <= st.summary_chars
            assert len(st.model_dump_json()) < 4096
        assert states[0].chunks >= 800 and states[1].chunks >= 330
        assert states[0].document_chars == len(prose)
        for st in states:
            await _tasks_recorded_once(url, st)

    with agentbus_up(tmp_path, "--workers", "3") as stack:
        asyncio.run(run(stack.url))


def test_three_orchestrators_share_a_13mb_job_and_its_history_reads_back(
    tmp_path: Path,
) -> None:
    text = prose_document(13, 13_000_000)

    async def run(url: str) -> None:
        async with AgentBusClient(url) as client:
            job_id = await client.submit(text, title="13 MB, three orchestrators")
            state = await client.wait(job_id, timeout_s=500)
            assert state.status is JobStatus.COMPLETED, state.error
            assert state.chunks >= 2000
            emitted = await _tasks_recorded_once(url, state)
            history = await _history(client, job_id, events=len(emitted))
        assert len(emitted) >= 5000
        assert len(history) == len(emitted)
        assert sorted(e.event_id for e in history) == sorted(e.event_id for e in emitted)
        assert history[0].kind is EventKind.JOB_ACCEPTED
        assert history[-1].kind is EventKind.JOB_COMPLETED

    with agentbus_up(tmp_path, "--workers", "3", "--orchestrators", "3") as stack:
        asyncio.run(run(stack.url))
        services = json.loads((stack.data_dir / "stack.json").read_text())["services"]
        orchestrators = [s for s in services if s["role"] == "orchestrator"]
        assert len(orchestrators) == 3
        for svc in orchestrators:  # every replica recorded results of the one job
            with urllib.request.urlopen(f"{svc['http']}/metrics", timeout=5) as reply:
                body = reply.read().decode()
            recorded = [
                float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("agentbus_results_collected_total")
                and 'outcome="recorded"' in line
            ]
            assert recorded and recorded[0] > 100, (svc["agent_id"], recorded)
