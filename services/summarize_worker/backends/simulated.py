"""A summarizer backend for benchmarks and tests: fixed latency, optional random failures.

`SimulatedSummarizer` waits `latency_ms` (without blocking the event loop), fails with a
retryable `SummarizerError` with probability `fail_rate`, and otherwise returns the lead
sentences of the text that fit the budget. It does no scoring, so its cost is the
latency alone; it is not meant for real use.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

from agentbus.chunking import split_sentences, truncate
from summarize_worker.backends.base import Summary
from summarize_worker.errors import SummarizerError

__all__ = ["SimulatedSummarizer", "lead_summary"]

_PREFIX_FACTOR: Final = 2
_PREFIX_EXTRA_CHARS: Final = 1024
"""Only the first `max_chars * 2 + 1024` characters are looked at (keeps large texts cheap)."""


def lead_summary(text: str, *, max_chars: int) -> str:
    """The first sentences of `text` that fit in `max_chars` characters, joined by spaces.

    If even the first sentence does not fit, it is cut at a word boundary and ends with
    "…". Never empty for a text with a non-space character. Raises `ValueError` if
    `max_chars < 1`.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    prefix_chars = max_chars * _PREFIX_FACTOR + _PREFIX_EXTRA_CHARS
    prefix = text[:prefix_chars]
    sentences = split_sentences(prefix)
    if len(text) > prefix_chars and len(sentences) > 1:
        sentences.pop()  # may be cut short by the prefix
    chosen: list[str] = []
    used_chars = 0
    for sentence in sentences:
        normalized = " ".join(sentence.split())
        cost = len(normalized) + (1 if chosen else 0)
        if used_chars + cost > max_chars:
            break
        chosen.append(normalized)
        used_chars += cost
    if chosen:
        return " ".join(chosen)
    return truncate(sentences[0] if sentences else prefix, max_chars=max_chars)


class SimulatedSummarizer:
    """Fixed-latency, optionally failing summarizer (benchmarks and tests only)."""

    name: str = "simulated"

    def __init__(self, *, latency_ms: float, fail_rate: float = 0.0, seed: int | None = None):
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {fail_rate}")
        self.latency_ms: Final = latency_ms
        self.fail_rate: Final = fail_rate
        self._random = random.Random(seed)  # simulation, not security
        self.calls = 0
        """Number of `summarize` calls that got past the latency (success or failure)."""

    async def summarize(self, text: str, *, max_chars: int) -> Summary:
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        await asyncio.sleep(self.latency_ms / 1000.0)
        self.calls += 1
        if self.fail_rate > 0.0 and self._random.random() < self.fail_rate:
            raise SummarizerError("simulated failure", retryable=True)
        return Summary(text=lead_summary(text, max_chars=max_chars))

    async def aclose(self) -> None:
        return None
