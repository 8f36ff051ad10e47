"""Live partial results: a job's items on `progress.{job_id}`, read live, resumed from a
cursor after a dropped connection, and replayed once the job has finished."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.client.stream import PartialResult
from agentbus.contract.messages import JobStatus, StreamKind
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import Running, with_sections
from tests.integration.rpc_helpers import cli

pytestmark = pytest.mark.integration


def _small_chunks(settings: Settings) -> Settings:
    return with_sections(
        settings,
        orchestrator={"chunk_chars": 400, "chunk_summary_chars": 120, "summary_chars": 300},
        summarizer={"backend": "simulated", "simulated_latency_ms": 30},
    )


def _document(paragraphs: int) -> str:
    return "\n\n".join(
        f"Paragraph {i} talks about river number {i}. The river floods every spring. "
        f"Farmers along river {i} plant rice after the flood recedes."
        for i in range(paragraphs)
    )


async def _read_all(
    client: AgentBusClient, job_id: str, *, after: int | None = None
) -> list[PartialResult]:
    return [item async for item in client.stream(job_id, after=after)]


def _key(item: PartialResult) -> tuple[object, ...]:
    return (item.cursor, item.kind, item.level, item.index, item.text)


@pytest.mark.timeout(90)
async def test_stream_live_resume_and_replay(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = _small_chunks(settings)
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with AgentBusClient(s.nats) as watcher, AgentBusClient(s.nats) as submitter:
        job_id = await submitter.submit(_document(40), title="rivers")
        uninterrupted = asyncio.create_task(_read_all(watcher, job_id))

        # a second reader drops its connection after a few items and resumes elsewhere
        first = AgentBusClient(s.nats)
        await first.connect()
        head: list[PartialResult] = []
        async for item in first.stream(job_id):
            head.append(item)
            if len(head) == 3:
                break
        await first.close()
        async with AgentBusClient(s.nats) as second:
            tail = await _read_all(second, job_id, after=head[-1].cursor)

        full = await asyncio.wait_for(uninterrupted, 60)
        state = await submitter.wait(job_id, timeout_s=30)
        assert state.status is JobStatus.COMPLETED, state.error

        # nothing missed, nothing repeated
        assert [_key(i) for i in head + tail] == [_key(i) for i in full]
        cursors = [i.cursor for i in full]
        assert cursors == sorted(set(cursors))

        # the job's story: chunk count first, every chunk, a reduce level, the final summary
        assert full[0].kind is StreamKind.STARTED and full[0].count == state.chunks
        chunks = [i for i in full if i.kind is StreamKind.CHUNK and i.level == 0]
        assert sorted(i.index or 0 for i in chunks) == list(range(state.chunks))
        assert all(i.text for i in chunks)
        assert any(i.kind is StreamKind.REDUCE and i.level == 1 for i in full)
        assert full[-1].kind is StreamKind.COMPLETED and full[-1].text == state.summary
        assert sum(i.final for i in full) == 1

        # a finished job replays, whole or from a cursor
        assert [_key(i) for i in await _read_all(watcher, job_id)] == [_key(i) for i in full]
        middle = full[len(full) // 2].cursor
        replay = await _read_all(watcher, job_id, after=middle)
        assert [_key(i) for i in replay] == [_key(i) for i in full if i.cursor > middle]
        # resuming after the final item ends at once: nothing more to read
        assert await asyncio.wait_for(_read_all(watcher, job_id, after=full[-1].cursor), 10) == []


@pytest.mark.timeout(60)
async def test_stream_of_one_chunk_job_ends_with_its_summary(
    bus: Bus, settings: Settings, running: Running
) -> None:
    await running.start(Orchestrator, settings, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), settings, "worker-1")
    async with AgentBusClient(settings.nats) as client:
        job_id = await client.submit(_document(2), title="short")
        items = await asyncio.wait_for(_read_all(client, job_id), 30)
        state = await client.wait(job_id, timeout_s=10)
    # one chunk, one summary: the final item is the whole story (no `started`, no chunk)
    assert [i.kind for i in items] == [StreamKind.COMPLETED]
    assert items[-1].text == state.summary and state.chunks == 1


@pytest.mark.timeout(30)
async def test_stream_rejects_bad_job_id_and_cursor(bus: Bus, settings: Settings) -> None:
    async with AgentBusClient(settings.nats) as client:
        with pytest.raises(ValueError, match="job_id"):
            client.stream("no.more.dots")
        with pytest.raises(ValueError, match="after=-1"):
            await anext(client.stream("job-1", after=-1))


@pytest.mark.timeout(90)
async def test_submit_follow_prints_json_lines(
    bus: Bus, settings: Settings, running: Running, tmp_path: Path
) -> None:
    s = _small_chunks(settings)
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    (tmp_path / "rivers.txt").write_text(_document(12))
    code, out, err = await cli(s, tmp_path, "submit", "--follow", "--json", "rivers.txt")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds[0] == "started" and kinds[-1] == "completed" and "chunk" in kinds
    assert [line["cursor"] for line in lines] == sorted({line["cursor"] for line in lines})
    async with AgentBusClient(s.nats) as client:
        state = await client.status(lines[0]["job_id"])
    assert state is not None and lines[-1]["text"] == state.summary

    code, _, err = await cli(s, tmp_path, "submit", "--follow", "a.txt", "b.txt")
    assert code == 2 and "exactly one FILE" in err


@pytest.mark.timeout(90)
async def test_stream_of_failed_job_ends_with_the_reason(
    bus: Bus, settings: Settings, running: Running
) -> None:
    s = settings.model_copy(
        update={
            "summarizer": settings.summarizer.model_copy(
                update={
                    "backend": "simulated",
                    "simulated_latency_ms": 1,
                    "simulated_fail_rate": 1.0,
                }
            )
        }
    )
    await running.start(Orchestrator, s, "orch-1")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-1")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(_document(2), title="doomed")
        items = await asyncio.wait_for(_read_all(client, job_id), 60)
        state = await client.wait(job_id, timeout_s=10)
    assert state.status is JobStatus.FAILED
    assert [i.kind for i in items][-1] is StreamKind.FAILED
    assert state.error and items[-1].error == state.error[:1000]
