"""The openai backend against a real inference server: llama.cpp's OpenAI-compatible
server (llama-cpp-python) with SmolLM2-135M-Instruct, the whole stack around it (nats-server,
orchestrator, workers). What a fake server cannot show: real usage figures, real streams,
real context limits, real generations interrupted and a real server killed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client import REGISTRY

from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract.headers import DLQ_HEADER_REASON
from agentbus.contract.messages import EventKind, JobStatus, StreamKind, TokenUsage
from agentbus.contract.settings import Settings
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizeSkill
from tests.conftest import dlq_messages, stream_agent_events, with_sections
from tests.llm.proxy import RecordingProxy
from tests.llm.server import MODEL_ALIAS, LlamaServer, missing

pytestmark = [pytest.mark.llm, pytest.mark.timeout(600)]

SAMPLES: Final = Path(__file__).resolve().parents[2] / "samples"
DOCUMENT: Final = (SAMPLES / "river-ecology-essay.txt").read_text()[:1900]
PROMPT_WORDS: Final = ("Summarize", "words or fewer", "main facts", "The text above")


def llm_settings(settings: Settings, url: str, **summarizer: object) -> Settings:
    return with_sections(
        settings,
        summarizer={
            "backend": "openai", "openai_base_url": url, "openai_model": MODEL_ALIAS,
            "openai_temperature": 0.0, "openai_timeout_s": 300.0, "openai_backoff_s": 0.2,
            **summarizer,
        },
        orchestrator={
            "chunk_chars": 800, "chunk_summary_chars": 240, "summary_chars": 360,
            "no_progress_timeout_s": 900.0,
        },
        worker={"concurrency": 2, "in_progress_interval_s": 1.0, "backoff_s": [1.0, 2.0, 3.0]},
        # a generation on a loaded machine may outlast the test default's 5 s
        topology={"ack_wait_s": 60.0, "max_deliver": 6},
    )  # fmt: skip


async def start_stack(running: Any, s: Settings, name: str, *, bus: Bus) -> TaskWorker:
    # the topology with these settings (max_deliver, ack_wait): the worker's last attempt
    # and the consumer's must agree for the task's own reason to reach the DLQ
    await provision(bus.js, s)
    await running.start(Orchestrator, s, f"orch-{name}")
    worker = await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, f"w-{name}")
    assert isinstance(worker, TaskWorker)
    return worker


async def first_delta(client: AgentBusClient, job_id: str) -> None:
    """Returns once the model has begun writing the job's answer (its first token delta)."""
    stream = client.stream(job_id)
    try:
        async for item in stream:
            if item.kind is StreamKind.DELTA:
                return
            assert not item.kind.final, item
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _tokens(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "agentbus_summarizer_tokens_total",
        {"service": "worker", "backend": "openai", "kind": kind},
    )
    return value or 0.0


def assert_a_summary(summary: str | None, source: str) -> None:
    """What even a small model meets: non-empty, shorter than its input, no prompt echo."""
    assert summary is not None and summary.strip()
    assert len(summary) < len(source)
    for words in PROMPT_WORDS:
        assert words not in summary, (words, summary)


async def test_multi_chunk_document_map_and_reduce_with_usage_summed_exactly(
    bus: Bus, settings: Settings, running: Any, proxy: RecordingProxy
) -> None:
    s = llm_settings(settings, proxy.url, openai_stream=False)
    await start_stack(running, s, "doc", bus=bus)
    before = (_tokens("prompt"), _tokens("completion"))
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(DOCUMENT, title="river")
        state = await client.wait(job_id, timeout_s=500)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.chunks >= 2 and state.level >= 1  # map and reduce
    assert_a_summary(state.summary, DOCUMENT)
    assert len(state.summary or "") <= 360
    answered = [e for e in proxy.exchanges if e.status == 200]
    assert len(answered) == len(proxy.exchanges) >= state.chunks + 1
    assert any("summaries of consecutive parts" in str(e.request) for e in answered)
    reported = TokenUsage(
        prompt_tokens=sum((e.usage or {})["prompt_tokens"] for e in answered),
        completion_tokens=sum((e.usage or {})["completion_tokens"] for e in answered),
    )
    assert reported.prompt_tokens > 0 and reported.completion_tokens > 0
    assert state.usage == reported
    events = [e for e in await stream_agent_events(bus) if e.job_id == job_id]
    per_task = [
        e.data["usage"] for e in events if e.kind is EventKind.TASK_COMPLETED and e.data["usage"]
    ]
    assert len(per_task) == len(answered)
    assert (
        TokenUsage(
            prompt_tokens=sum(u["prompt_tokens"] for u in per_task),
            completion_tokens=sum(u["completion_tokens"] for u in per_task),
        )
        == reported
    )
    (done,) = [e for e in events if e.kind is EventKind.JOB_COMPLETED]
    assert done.data["usage"] == reported.model_dump()
    assert (_tokens("prompt") - before[0], _tokens("completion") - before[1]) == (
        reported.prompt_tokens,
        reported.completion_tokens,
    )
    for e in answered:  # max_tokens derived from each task's budget
        assert e.request["max_tokens"] <= 360 // 3 + 16


async def test_token_deltas_reach_the_stream_in_order(
    bus: Bus, settings: Settings, running: Any, proxy: RecordingProxy
) -> None:
    s = llm_settings(settings, proxy.url, openai_stream=True)
    await start_stack(running, s, "stream", bus=bus)
    text = DOCUMENT[:780]
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text, summary_chars=300)
        items = [item async for item in client.stream(job_id)]
    assert items[-1].kind is StreamKind.COMPLETED, items[-1]
    assert_a_summary(items[-1].text, text)
    deltas = [i for i in items if i.kind is StreamKind.DELTA]
    (exchange,) = proxy.exchanges
    assert exchange.streamed and exchange.finished
    assert len(deltas) >= 5  # token by token, not the answer at once
    assert [i.cursor for i in items] == sorted(i.cursor for i in items)
    streamed = ""
    for d in deltas:
        streamed = d.text if d.restart else streamed + d.text
    # the final summary is the streamed answer, cleaned and cut at a sentence
    final = items[-1].text.rstrip("\u2026")
    assert " ".join(final.split()) in " ".join(streamed.split())


async def test_cancel_interrupts_a_long_generation(
    bus: Bus, settings: Settings, running: Any, proxy: RecordingProxy
) -> None:
    s = llm_settings(settings, proxy.url, openai_stream=True, openai_max_tokens=4096)
    s = with_sections(s, orchestrator={"chunk_chars": 6000}, worker={"concurrency": 1})
    worker = await start_stack(running, s, "cancel", bus=bus)
    long_text = (SAMPLES / "river-ecology-essay.txt").read_text()[:4000]
    async with AgentBusClient(s.nats) as client:
        # a budget of 3,000 characters: max_tokens ~1,000, far longer than the wait below
        job_id = await client.submit(long_text, summary_chars=3000)
        await first_delta(client, job_id)  # the model is writing
        reply = await client.cancel(job_id, reason="enough")
        assert reply.canceled
        for _ in range(300):
            if worker.in_flight() == 0 and any(e.client_closed for e in proxy.exchanges):
                break
            await asyncio.sleep(0.1)
        (exchange,) = proxy.exchanges
        assert exchange.client_closed and not exchange.finished  # the HTTP stream was closed
        assert worker.in_flight() == 0  # the slot is free
        state = await client.wait(job_id, timeout_s=30)
        assert state.status is JobStatus.CANCELED
        # the freed slot serves the next job (one slot: it could not otherwise)
        short = DOCUMENT[:700]
        next_id = await client.submit(short, summary_chars=300)
        after = await client.wait(next_id, timeout_s=300)
    assert after.status is JobStatus.COMPLETED, after.error
    canceled = [
        e
        for e in await stream_agent_events(bus)
        if e.job_id == job_id and e.kind is EventKind.TASK_CANCELED
    ]
    assert [e.data["stage"] for e in canceled] == ["running"]


async def test_context_overflow_is_refused_with_the_reason_once(
    bus: Bus, settings: Settings, running: Any, proxy: RecordingProxy
) -> None:
    """A chunk longer than the model's context (2,048 tokens): refused at once with the
    server's reason and the setting that fixes it, never retried in a loop."""
    s = llm_settings(settings, proxy.url)
    s = with_sections(s, orchestrator={"chunk_chars": 20_000, "summary_chars": 300})
    await start_stack(running, s, "ctx", bus=bus)
    text = " ".join((SAMPLES / "river-ecology-essay.txt").read_text().split())
    text = (text + " ") * (1 + 12_000 // len(text))
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit(text[:12_000])
        state = await client.wait(job_id, timeout_s=120)
    assert state.status is JobStatus.FAILED
    assert state.error is not None
    assert "context" in state.error and "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS" in state.error
    # streamed: an empty 200 stream (llama.cpp's refusal); asked again without
    # streaming: the 400 and its reason; then nothing more (the task failed at once)
    assert [(e.streamed, e.status) for e in proxy.exchanges] == [(True, 200), (False, 400)]


@pytest.mark.timeout(900)
async def test_server_killed_mid_generation_and_restarted(
    bus: Bus, settings: Settings, running: Any, tmp_path: Path
) -> None:
    """The task is retried with backoff (inside the backend, then by JetStream) while the
    server is down, and completes once it is back on its address."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    server = LlamaServer(log_path=tmp_path / "server.log")
    server.start()
    try:
        s = llm_settings(settings, server.url, openai_max_retries=1, openai_stream=True)
        # room for the server's restart (a model load) in the task's redeliveries
        s = with_sections(s, topology={"max_deliver": 12})
        await start_stack(running, s, "kill", bus=bus)
        text = DOCUMENT[:780]
        async with AgentBusClient(s.nats) as client:
            job_id = await client.submit(text, summary_chars=600)
            await first_delta(client, job_id)  # mid-generation
            server.kill()
            await asyncio.sleep(1.0)  # the worker meets a dead server
            await asyncio.to_thread(server.start)  # same port
            state = await client.wait(job_id, timeout_s=600)
        assert state.status is JobStatus.COMPLETED, state.error
        assert_a_summary(state.summary, text)
        retried = [
            e
            for e in await stream_agent_events(bus)
            if e.job_id == job_id and e.kind is EventKind.TASK_RETRIED
        ]
        assert retried and all(e.data["delay_s"] > 0 for e in retried)
    finally:
        server.stop()


async def test_server_killed_for_good_dead_letters_the_task_with_the_reason(
    bus: Bus, settings: Settings, running: Any, tmp_path: Path
) -> None:
    """No server comes back: after max_deliver tries the task is on the DLQ with the
    reason, and the job failed with it; nothing keeps retrying."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    server = LlamaServer(log_path=tmp_path / "server.log")
    server.start()
    try:
        s = llm_settings(settings, server.url, openai_max_retries=1, openai_stream=True)
        s = with_sections(s, worker={"backoff_s": [0.2]}, topology={"max_deliver": 3})
        await start_stack(running, s, "gone", bus=bus)
        text = DOCUMENT[:780]
        async with AgentBusClient(s.nats) as client:
            job_id = await client.submit(text, summary_chars=600)
            await first_delta(client, job_id)  # mid-generation
            server.kill()
            state = await client.wait(job_id, timeout_s=300)
    finally:
        server.stop()
    assert state.status is JobStatus.FAILED
    assert state.error is not None and "127.0.0.1" in state.error
    reasons = [h.get(DLQ_HEADER_REASON, "") for _s, h, _d in await dlq_messages(bus)]
    assert any("failed after" in r and "127.0.0.1" in r for r in reasons), reasons
