"""A reduce that always ends, through the stack: a model (a fake OpenAI-compatible
server) that always answers far too long still completes every job, within its summary
budget and a bounded number of levels; a document already within its budget is never
sent to the model; the job's token usage adds up to what the server reported."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract.messages import EventKind, JobStatus, TokenUsage
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import stream_agent_events, with_sections
from tests.fake_openai import Answer, FakeOpenAI, fake_openai

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

__all__ = ["fake_openai"]  # the fixture, imported for this module's tests

TOO_LONG = " ".join(f"Sentence number {i} of an answer that never stops." for i in range(80))
DOCUMENT = "\n\n".join(
    f"Paragraph {p}. " + " ".join(f"The river {p} floods in spring {i}." for i in range(12))
    for p in range(10)
)


def _settings(settings: Settings, server: FakeOpenAI, *, max_reduce_levels: int) -> Settings:
    return with_sections(
        settings,
        summarizer={"backend": "openai", "openai_base_url": server.url, "openai_model": "m"},
        orchestrator={
            "chunk_chars": 400,
            "chunk_summary_chars": 150,
            "summary_chars": 200,
            "max_reduce_levels": max_reduce_levels,
        },
        worker={"concurrency": 4, "in_progress_interval_s": 1.0},
        # no redelivery of a task still running on a loaded machine (it would be a
        # second request whose tokens the job does not record)
        topology={"ack_wait_s": 30.0},
    )


@pytest.mark.parametrize("max_reduce_levels", [0, 1, 8])
async def test_a_model_that_always_answers_too_long_still_ends(
    bus: Bus, settings: Settings, running: Any, fake_openai: FakeOpenAI, max_reduce_levels: int
) -> None:
    fake_openai.default = Answer(content=TOO_LONG)
    s = _settings(settings, fake_openai, max_reduce_levels=max_reduce_levels)
    await running.start(Orchestrator, s, "orch-long")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-long")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(DOCUMENT)
        state = await client.wait(job_id, timeout_s=60)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.summary is not None and 0 < len(state.summary) <= 200
    assert state.summary.endswith(".")  # cut after a whole sentence
    assert state.chunks > 5
    assert state.level <= max_reduce_levels
    # one request per task: the map level, then about half as many per reduce level
    assert state.chunks <= len(fake_openai.requests) < 3 * state.chunks
    for request in fake_openai.requests:
        assert request["max_tokens"] < 200  # derived from the task's budget


async def test_a_document_within_its_budget_is_not_sent_to_the_model(
    bus: Bus, settings: Settings, running: Any, fake_openai: FakeOpenAI
) -> None:
    s = _settings(settings, fake_openai, max_reduce_levels=8)
    await running.start(Orchestrator, s, "orch-short")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-short")
    text = "The river floods every spring. Farmers plant rice when the water recedes."
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text)
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.summary == text
    assert fake_openai.requests == []


def _tokens(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "agentbus_summarizer_tokens_total",
        {"service": "worker", "backend": "openai", "kind": kind},
    )
    return value or 0.0


async def test_token_usage_is_summed_exactly_in_state_events_and_metrics(
    bus: Bus, settings: Settings, running: Any, fake_openai: FakeOpenAI
) -> None:
    """Every request answers with its own usage: the job's state, its events and the
    metric add up to exactly what the server reported, map and reduce."""
    fake_openai.script = [
        Answer(content=TOO_LONG, usage={"prompt_tokens": 100 + i, "completion_tokens": 3 * i + 1})
        for i in range(60)
    ]
    s = _settings(settings, fake_openai, max_reduce_levels=8)
    before = (_tokens("prompt"), _tokens("completion"))
    await running.start(Orchestrator, s, "orch-usage")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-usage")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(DOCUMENT)
        state = await client.wait(job_id, timeout_s=60)
    assert state.status is JobStatus.COMPLETED, state.error
    served = len(fake_openai.requests)
    assert state.level > 0 and served > state.chunks  # map and reduce through the model
    expected = TokenUsage(
        prompt_tokens=sum(100 + i for i in range(served)),
        completion_tokens=sum(3 * i + 1 for i in range(served)),
    )
    assert state.usage == expected
    events = [e for e in await stream_agent_events(bus) if e.job_id == job_id]
    # (a reduce group already within its budget is no request and has no usage)
    completed = [e for e in events if e.kind is EventKind.TASK_COMPLETED and e.data["usage"]]
    assert len(completed) == served
    assert sum(e.data["usage"]["prompt_tokens"] for e in completed) == expected.prompt_tokens
    assert sum(e.data["usage"]["completion_tokens"] for e in completed) == (
        expected.completion_tokens
    )
    (job_done,) = [e for e in events if e.kind is EventKind.JOB_COMPLETED]
    assert job_done.data["usage"] == expected.model_dump()
    assert (_tokens("prompt") - before[0], _tokens("completion") - before[1]) == (
        expected.prompt_tokens,
        expected.completion_tokens,
    )
