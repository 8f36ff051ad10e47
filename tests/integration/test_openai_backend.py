"""The OpenAI-compatible backend against a local HTTP server that speaks the protocol
(`POST /v1/chat/completions`, plain and streamed as server-sent events), including 429
and 5xx answers and streams that break off, and in a running worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agentbus.bus.core import Bus
from agentbus.client.api import AgentBusClient
from agentbus.contract.errors import ConfigError
from agentbus.contract.messages import EventKind, JobStatus, StreamKind
from agentbus.contract.settings import Settings, SummarizerSettings
from agentbus.runtime.worker import TaskWorker
from agentbus_orchestrator import Orchestrator
from agentbus_summarize_worker import SummarizerError, SummarizeSkill
from agentbus_summarize_worker.backends import OpenAISummarizer, make_summarizer
from agentbus_summarize_worker.backends.openai import parse_retry_after
from tests.conftest import stream_agent_events
from tests.fake_openai import Answer, FakeOpenAI, fake_openai

pytestmark = pytest.mark.integration

__all__ = ["fake_openai"]  # the fixture, imported for this module's tests


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_backend(server: FakeOpenAI, **kw: Any) -> tuple[OpenAISummarizer, RecordedSleep]:
    sleep = RecordedSleep()
    options: dict[str, Any] = {"base_url": server.url, "model": "tiny", "backoff_s": 0.5}
    options.update(kw)
    return OpenAISummarizer(sleep=sleep, **options), sleep


async def test_summary_and_usage(fake_openai: FakeOpenAI) -> None:
    backend, sleep = make_backend(fake_openai, api_key="sk-test", temperature=0.0)
    try:
        out = await backend.summarize("Some long text about rivers. " * 20, max_chars=300)
    finally:
        await backend.aclose()
    assert out.text == "A short summary."
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (50, 7)
    assert sleep.delays == []
    (req,) = fake_openai.requests
    assert req["model"] == "tiny" and req["stream"] is False and req["temperature"] == 0.0
    assert [m["role"] for m in req["messages"]] == ["system", "user"]
    user = req["messages"][1]["content"]
    assert user.startswith("Some long text about rivers. " * 19 + "Some long text about rivers.")
    assert "in 42 words or fewer" in user
    assert 0 < req["max_tokens"] <= 2048
    assert fake_openai.auth == ["Bearer sk-test"]


async def test_429_and_500_are_retried_honouring_retry_after(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = [
        Answer(status=429, headers={"Retry-After": "2"}),
        Answer(status=500),
        Answer(status=503, headers={"Retry-After": "0"}),
        Answer(content="Recovered summary."),
    ]
    backend, sleep = make_backend(fake_openai, max_retries=4, backoff_s=0.5, backoff_max_s=10)
    try:
        out = await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert out.text == "Recovered summary."
    assert len(fake_openai.requests) == 4
    assert fake_openai.auth == [None] * 4  # no key configured: no Authorization header
    # Retry-After wins; without it the backoff of retry 1 is 0.5 * 2**1 with jitter in [50%, 100%]
    assert sleep.delays[0] == 2.0
    assert 0.5 <= sleep.delays[1] <= 1.0
    assert sleep.delays[2] == 0.0


async def test_retry_after_as_http_date(fake_openai: FakeOpenAI) -> None:
    when = datetime.now(UTC) + timedelta(seconds=5)
    fake_openai.script = [Answer(status=429, headers={"Retry-After": format_datetime(when, True)})]
    backend, sleep = make_backend(fake_openai, backoff_max_s=30)
    try:
        await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert len(sleep.delays) == 1 and 3.0 <= sleep.delays[0] <= 5.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("-3") == 0.0


async def test_retries_exhausted_is_a_retryable_error(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Answer(status=502)
    backend, sleep = make_backend(fake_openai, max_retries=2)
    try:
        with pytest.raises(SummarizerError, match="HTTP 502") as info:
            await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert info.value.retryable is True
    assert "gave up after 3 attempt(s)" in str(info.value)
    assert len(fake_openai.requests) == 3 and len(sleep.delays) == 2


async def test_long_retry_after_gives_the_task_back(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = [Answer(status=429, headers={"Retry-After": "120"})]
    backend, sleep = make_backend(fake_openai, backoff_max_s=30)
    try:
        with pytest.raises(SummarizerError, match="retry after 120s") as info:
            await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert info.value.retryable is True and sleep.delays == []


@pytest.mark.parametrize(
    ("status", "hint"),
    [(400, "scripted 400"), (401, "OPENAI_API_KEY"), (404, "OPENAI_BASE_URL"), (422, "422")],
)
async def test_4xx_is_a_clear_non_retryable_error(
    fake_openai: FakeOpenAI, status: int, hint: str
) -> None:
    fake_openai.script = [Answer(status=status)]
    backend, sleep = make_backend(fake_openai)
    try:
        with pytest.raises(SummarizerError) as info:
            await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    message = str(info.value)
    assert info.value.retryable is False
    assert f"HTTP {status}" in message and hint in message
    assert "/v1/chat/completions" in message and "tiny" in message
    assert len(fake_openai.requests) == 1 and sleep.delays == []


async def test_overshoot_is_cut_at_a_word_boundary(fake_openai: FakeOpenAI) -> None:
    words = [f"word{i}" for i in range(200)]
    fake_openai.script = [Answer(content="<think>planning the summary</think>" + " ".join(words))]
    backend, _ = make_backend(fake_openai)
    try:
        out = await backend.summarize("text " * 50, max_chars=100)
    finally:
        await backend.aclose()
    assert len(out.text) <= 100
    assert out.text.startswith("word0 word1")
    kept = out.text.rstrip("…").split()
    assert all(w in words for w in kept)  # no word cut in half
    assert "think" not in out.text


async def test_timeout_and_garbage(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = [Answer(delay_s=2.0), Answer(body="<html>proxy</html>")]
    backend, sleep = make_backend(fake_openai, timeout_s=0.3, max_retries=1)
    try:
        with pytest.raises(SummarizerError, match="not JSON") as info:
            await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert info.value.retryable is False
    assert len(fake_openai.requests) == 2 and len(sleep.delays) == 1  # the timeout was retried


async def test_settings_key_file_and_factory(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    settings = SummarizerSettings(
        backend="openai",
        openai_base_url=fake_openai.url,
        openai_model="m",
        openai_api_key="sk-from-env",
        openai_api_key_file=key_file,
    )
    backend = make_summarizer(settings)
    try:
        assert backend.name == "openai"
        await backend.summarize("text " * 50, max_chars=200)
    finally:
        await backend.aclose()
    assert fake_openai.auth == ["Bearer sk-from-file"]
    missing = settings.model_copy(update={"openai_api_key_file": tmp_path / "nope"})
    with pytest.raises(ConfigError, match=r"AGENTBUS_SUMMARIZER__OPENAI_API_KEY_FILE=.*nope"):
        make_summarizer(missing)
    with pytest.raises(ConfigError, match="AGENTBUS_SUMMARIZER__OPENAI_BASE_URL"):
        make_summarizer(settings.model_copy(update={"openai_base_url": "ftp://x"}))


def _tokens(kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "agentbus_summarizer_tokens_total",
        {"service": "worker", "backend": "openai", "kind": kind},
    )
    return value or 0.0


async def test_worker_records_token_usage(
    bus: Bus,
    settings: Settings,
    running: Any,
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.script = [Answer(status=429, headers={"Retry-After": "0"})]
    fake_openai.default = Answer(
        content="Rivers flood in spring.", usage={"prompt_tokens": 120, "completion_tokens": 9}
    )
    s = settings.model_copy(
        update={
            "summarizer": SummarizerSettings(
                backend="openai", openai_base_url=fake_openai.url, openai_model="tiny"
            )
        }
    )
    before = (_tokens("prompt"), _tokens("completion"))
    await running.start(Orchestrator, s, "orch-openai")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-openai")
    async with AgentBusClient(s.nats) as client:
        # (a budget below the text's length: a text within it is never sent to a model)
        job_id = await client.submit("The river floods every spring. " * 10, summary_chars=100)
        state = await client.wait(job_id, timeout_s=30)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.summary == "Rivers flood in spring."
    assert len(fake_openai.requests) == 2  # the 429 was retried inside the backend
    completed = [
        ev
        for ev in await stream_agent_events(bus)
        if ev.kind is EventKind.TASK_COMPLETED and ev.job_id == job_id
    ]
    assert len(completed) == 1
    assert completed[0].data["usage"] == {"prompt_tokens": 120, "completion_tokens": 9}
    assert (_tokens("prompt") - before[0], _tokens("completion") - before[1]) == (120, 9)


class Deltas:
    """A `DeltaSink` that records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, text: str, *, restart: bool = False) -> None:
        self.calls.append((text, restart))

    def text(self) -> str:
        out = ""
        for piece, restart in self.calls:
            out = piece if restart else out + piece
        return out


async def test_streamed_summary_forwards_deltas_and_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Answer(content="Rivers flood every spring and farmers plant rice.")
    backend, sleep = make_backend(fake_openai, api_key="sk-test")
    deltas = Deltas()
    try:
        out = await backend.summarize("text " * 50, max_chars=200, on_delta=deltas)
    finally:
        await backend.aclose()
    assert out.text == "Rivers flood every spring and farmers plant rice."
    assert len(deltas.calls) == 8 and deltas.text() == out.text
    assert not any(restart for _, restart in deltas.calls)
    assert out.usage is not None and out.usage.completion_tokens == 7
    (req,) = fake_openai.requests
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}
    assert fake_openai.auth == ["Bearer sk-test"] and sleep.delays == []


@pytest.mark.parametrize("failure", ["break_after", "error_after"])
async def test_stream_failing_midway_is_retried_from_the_start(
    fake_openai: FakeOpenAI, failure: str
) -> None:
    content = "Rivers flood every spring and farmers plant rice."
    broken = Answer(content=content)
    setattr(broken, failure, 3)
    fake_openai.script = [broken]
    fake_openai.default = Answer(content=content)
    backend, sleep = make_backend(fake_openai, max_retries=2)
    deltas = Deltas()
    try:
        out = await backend.summarize("text " * 50, max_chars=200, on_delta=deltas)
    finally:
        await backend.aclose()
    assert out.text == content and len(fake_openai.requests) == 2 and len(sleep.delays) == 1
    # three words of the first try, then the second try from its start
    assert [t for t, _ in deltas.calls[:3]] == ["Rivers", " flood", " every"]
    assert deltas.calls[3] == ("Rivers", True)
    assert deltas.text() == content


async def test_stream_that_keeps_breaking_gives_up_retryable(fake_openai: FakeOpenAI) -> None:
    fake_openai.default = Answer(content="one two three four", break_after=2)
    backend, _ = make_backend(fake_openai, max_retries=1)
    try:
        with pytest.raises(SummarizerError, match="stream broke off") as info:
            await backend.summarize("text " * 50, max_chars=200, on_delta=Deltas())
    finally:
        await backend.aclose()
    assert info.value.retryable is True and len(fake_openai.requests) == 2


@pytest.mark.timeout(60)
async def test_job_streams_token_deltas_to_its_readers(
    bus: Bus, settings: Settings, running: Any, fake_openai: FakeOpenAI
) -> None:
    content = "Rivers flood in spring and farmers plant rice after the water recedes."
    fake_openai.script = [Answer(content=content, break_after=4)]  # one retried stream
    fake_openai.default = Answer(content=content)
    s = settings.model_copy(
        update={
            "summarizer": SummarizerSettings(
                backend="openai", openai_base_url=fake_openai.url, openai_model="tiny",
                openai_backoff_s=0.01,
            )
        }
    )  # fmt: skip
    await running.start(Orchestrator, s, "orch-openai")
    await running.start(lambda st: TaskWorker(st, SummarizeSkill(st)), s, "worker-openai")
    async with AgentBusClient(s.nats) as client:
        job_id = await client.submit("The river floods every spring. " * 10, summary_chars=100)
        items = [item async for item in client.stream(job_id)]
    assert items[-1].kind is StreamKind.COMPLETED
    assert items[-1].text == content
    deltas = [i for i in items if i.kind is StreamKind.DELTA]
    assert deltas and all(i.level == 0 and i.index == 0 for i in deltas)
    assert any(i.restart for i in deltas)  # the broken stream's text was dropped
    text = ""
    for d in deltas:
        text = d.text if d.restart else text + d.text
    assert text == content
    # every delta before the final item, in cursor order
    assert max(d.cursor for d in deltas) < items[-1].cursor
    assert [i.cursor for i in items] == sorted(i.cursor for i in items)


async def test_an_empty_stream_is_asked_again_without_streaming(fake_openai: FakeOpenAI) -> None:
    """llama.cpp's server refuses a prompt over the model's context with an empty 200
    stream: asked again without streaming, its 400 says why, and the task fails at once."""
    fake_openai.script = [Answer(empty_stream=True), Answer(status=400)]
    backend, sleep = make_backend(fake_openai)
    try:
        with pytest.raises(SummarizerError, match="HTTP 400") as info:
            await backend.summarize("text " * 50, max_chars=200, on_delta=Deltas())
    finally:
        await backend.aclose()
    assert info.value.retryable is False and sleep.delays == []
    assert [r["stream"] for r in fake_openai.requests] == [True, False]
