"""Summarizer backends of the summarize worker and the factory that picks one from settings.

- `extractive` (default): offline, deterministic, no model download;
- `simulated`: fixed latency and optional failures, for benchmarks and tests;
- `openai`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, Ollama, OpenAI).
"""

from __future__ import annotations

from agentbus.contract.settings import SummarizerSettings
from agentbus_summarize_worker.backends.base import Summarizer, Summary
from agentbus_summarize_worker.backends.extractive import ExtractiveSummarizer, summarize_extractive
from agentbus_summarize_worker.backends.openai import OpenAISummarizer
from agentbus_summarize_worker.backends.simulated import SimulatedSummarizer, lead_summary
from agentbus_summarize_worker.errors import SummarizerError

__all__ = [
    "ExtractiveSummarizer",
    "OpenAISummarizer",
    "SimulatedSummarizer",
    "Summarizer",
    "Summary",
    "lead_summary",
    "make_summarizer",
    "summarize_extractive",
]


def make_summarizer(settings: SummarizerSettings) -> Summarizer:
    """The summarizer backend named by `settings.backend` (`AGENTBUS_SUMMARIZER__BACKEND`).

    Raises a non-retryable `SummarizerError` for a backend this build does not provide.
    """
    if settings.backend == "extractive":
        return ExtractiveSummarizer()
    if settings.backend == "simulated":
        return SimulatedSummarizer(
            latency_ms=settings.simulated_latency_ms, fail_rate=settings.simulated_fail_rate
        )
    if settings.backend == "openai":
        return OpenAISummarizer.from_settings(settings)
    raise SummarizerError(
        f"AGENTBUS_SUMMARIZER__BACKEND={settings.backend} is not available in this build",
        retryable=False,
    )
