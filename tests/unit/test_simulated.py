"""Unit tests of the simulated summarizer backend and of the backend factory."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from agentbus.contract.chunking import ELLIPSIS
from agentbus.contract.settings import SummarizerSettings
from agentbus_summarize_worker.backends import (
    ExtractiveSummarizer,
    SimulatedSummarizer,
    Summarizer,
    lead_summary,
    make_summarizer,
)
from agentbus_summarize_worker.errors import SummarizerError, SummarizeWorkerError

pytestmark = pytest.mark.unit

TEXT = (
    "The first sentence sets the scene. The second sentence adds detail. "
    "The third sentence wraps it up. A fourth sentence is extra."
)


async def test_returns_lead_sentences_within_budget() -> None:
    summarizer = SimulatedSummarizer(latency_ms=0)
    result = await summarizer.summarize(TEXT, max_chars=70)
    assert result.text == "The first sentence sets the scene. The second sentence adds detail."
    assert result.usage is None
    assert summarizer.name == "simulated"


async def test_whole_text_when_it_fits() -> None:
    result = await SimulatedSummarizer(latency_ms=0).summarize(TEXT, max_chars=1000)
    assert result.text == TEXT


async def test_long_first_sentence_is_truncated() -> None:
    text = "A very long opening sentence that keeps going well past the budget. Short."
    result = await SimulatedSummarizer(latency_ms=0).summarize(text, max_chars=30)
    assert len(result.text) <= 30
    assert result.text.endswith(ELLIPSIS)
    assert text.startswith(result.text[: -len(ELLIPSIS)])


@pytest.mark.parametrize("max_chars", [1, 2, 5, 17, 40, 99])
def test_lead_summary_budget(max_chars: int) -> None:
    summary = lead_summary(TEXT * 50, max_chars=max_chars)
    assert 0 < len(summary) <= max_chars


def _cpu_s(text: str, *, max_chars: int, repeat: int = 5) -> float:
    """The least process CPU time of `repeat` runs of `lead_summary` (CPU, not wall time:
    other processes on the machine do not count towards it)."""
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        lead_summary(text, max_chars=max_chars)
        best = min(best, time.process_time() - started)
    return best


def test_lead_summary_of_huge_text_is_cheap() -> None:
    """Cheap means the work does not grow with the text (only a prefix is read): 26 MB
    costs about the CPU time of 260 kB (ratio ~1; a pass over the whole text would give
    ~100). A ratio of CPU times, so no bound that a loaded machine breaks."""
    text = TEXT * 200_000  # ~26 MB
    summary = lead_summary(text, max_chars=200)
    assert summary.startswith("The first sentence sets the scene.")
    assert len(summary) <= 200
    small_s, huge_s = _cpu_s(TEXT * 2_000, max_chars=200), _cpu_s(text, max_chars=200)
    assert huge_s < 10 * small_s, (small_s, huge_s)


def test_lead_summary_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        lead_summary(TEXT, max_chars=0)


async def test_latency_is_applied() -> None:
    summarizer = SimulatedSummarizer(latency_ms=50)
    started = time.perf_counter()
    await summarizer.summarize(TEXT, max_chars=100)
    assert time.perf_counter() - started >= 0.045


async def test_latency_does_not_block_the_loop() -> None:
    """20 summaries wait out their latency at the same time while the loop serves other
    work: with a latency far longer than the test, all 20 are still waiting after the loop
    went round (a blocking wait would run them one after the other, never giving the loop
    back). No clock is read, so load cannot change the outcome."""
    summarizer = SimulatedSummarizer(latency_ms=3_600_000)
    waiting = [asyncio.create_task(summarizer.summarize(TEXT, max_chars=50)) for _ in range(20)]
    for _ in range(3):
        await asyncio.sleep(0)  # the loop goes round: every task is in its wait
    assert summarizer.calls == 0 and not any(t.done() for t in waiting)
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert all(t.cancelled() for t in waiting)
    quick = SimulatedSummarizer(latency_ms=0)
    results = await asyncio.gather(*(quick.summarize(TEXT, max_chars=50) for _ in range(20)))
    assert len({r.text for r in results}) == 1


async def test_zero_latency_still_yields() -> None:
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    task = asyncio.create_task(other())
    await SimulatedSummarizer(latency_ms=0).summarize(TEXT, max_chars=50)
    assert ran
    await task


async def test_fail_rate_one_always_fails_retryably() -> None:
    summarizer = SimulatedSummarizer(latency_ms=0, fail_rate=1.0)
    for _ in range(5):
        with pytest.raises(SummarizerError, match="simulated failure") as info:
            await summarizer.summarize(TEXT, max_chars=50)
        assert info.value.retryable is True
        assert isinstance(info.value, SummarizeWorkerError)
    assert summarizer.calls == 5


async def test_fail_rate_zero_never_fails() -> None:
    summarizer = SimulatedSummarizer(latency_ms=0, fail_rate=0.0)
    for _ in range(200):
        await summarizer.summarize(TEXT, max_chars=50)


async def _failure_pattern(summarizer: SimulatedSummarizer, calls: int) -> list[bool]:
    pattern = []
    for _ in range(calls):
        try:
            await summarizer.summarize(TEXT, max_chars=50)
        except SummarizerError:
            pattern.append(True)
        else:
            pattern.append(False)
    return pattern


async def test_fail_rate_is_seeded_and_roughly_right() -> None:
    first = await _failure_pattern(SimulatedSummarizer(latency_ms=0, fail_rate=0.3, seed=42), 1000)
    second = await _failure_pattern(SimulatedSummarizer(latency_ms=0, fail_rate=0.3, seed=42), 1000)
    assert first == second
    assert 0.25 < sum(first) / len(first) < 0.35


@pytest.mark.parametrize(
    ("latency_ms", "fail_rate", "match"),
    [(-1.0, 0.0, "latency_ms"), (0.0, -0.1, "fail_rate"), (0.0, 1.5, "fail_rate")],
)
def test_constructor_validates(latency_ms: float, fail_rate: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimulatedSummarizer(latency_ms=latency_ms, fail_rate=fail_rate)


async def test_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        await SimulatedSummarizer(latency_ms=0).summarize(TEXT, max_chars=0)


def test_summarizer_error_defaults_and_repr() -> None:
    error = SummarizerError("boom")
    assert error.retryable is True
    assert str(error) == "boom"
    assert "retryable=True" in repr(error)
    assert SummarizerError("bad config", retryable=False).retryable is False


# --------------------------------------------------------------------------- make_summarizer


async def test_make_summarizer_extractive() -> None:
    summarizer: Summarizer = make_summarizer(SummarizerSettings(backend="extractive"))
    assert isinstance(summarizer, ExtractiveSummarizer)
    assert summarizer.name == "extractive"
    await summarizer.aclose()


async def test_make_summarizer_simulated_uses_settings() -> None:
    settings = SummarizerSettings(
        backend="simulated", simulated_latency_ms=5.0, simulated_fail_rate=1.0
    )
    summarizer = make_summarizer(settings)
    assert isinstance(summarizer, SimulatedSummarizer)
    assert summarizer.latency_ms == 5.0
    assert summarizer.fail_rate == 1.0
    with pytest.raises(SummarizerError):
        await summarizer.summarize(TEXT, max_chars=50)
    await summarizer.aclose()
