"""A summarizer backend for benchmarks and tests: fixed latency, optional random failures.

`SimulatedSummarizer` waits `latency_ms` (without blocking the event loop), fails with a
retryable `SummarizerError` with probability `fail_rate`, and otherwise returns the lead
sentences of the text that fit the budget. It does no scoring, so its cost is the
latency alone; it is not meant for real use.

Fault injection (tests only): a text may carry markers `[[simulated:NAME]]` or
`[[simulated:NAME=VALUE]]` that change what happens to *that* text:

- `latency_ms=N`    wait N ms instead of `latency_ms` (a long summary);
- `fail`            fail with a retryable error, every time (poison input);
- `fatal`           fail with a non-retryable error (straight to the dead-letter queue);
- `fail-while=PATH` fail retryably while the file PATH exists (a dependency that is
                    down until an operator fixes it; delete the file to "fix" it);
- `crash`           end the whole process at once with `os._exit` (a worker that dies
                    on a task, as if OOM-killed).

Markers are read from the first `MARKER_SCAN_CHARS` characters only.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentbus.contract.chunking import split_sentences, truncate
from agentbus_summarize_worker.backends.base import DeltaSink, Summary
from agentbus_summarize_worker.errors import SummarizerError

__all__ = ["CRASH_EXIT_CODE", "MARKER_SCAN_CHARS", "Faults", "SimulatedSummarizer", "lead_summary"]

_PREFIX_FACTOR: Final = 2
_PREFIX_EXTRA_CHARS: Final = 1024
"""Only the first `max_chars * 2 + 1024` characters are looked at (keeps large texts cheap)."""

MARKER_SCAN_CHARS: Final = 4096
CRASH_EXIT_CODE: Final = 70
_MARKER_RE: Final = re.compile(r"\[\[simulated:([a-z_-]+)(?:=([^\]]*))?\]\]")


@dataclass(frozen=True, slots=True)
class Faults:
    """The fault markers found in one text (see the module docstring)."""

    latency_ms: float | None = None
    fail: bool = False
    fatal: bool = False
    fail_while: Path | None = None
    crash: bool = False

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Read the markers of `text`; raises `ValueError` naming a malformed marker."""
        latency_ms: float | None = None
        flags: set[str] = set()
        fail_while: Path | None = None
        for m in _MARKER_RE.finditer(text[:MARKER_SCAN_CHARS]):
            name, value = m.group(1), m.group(2)
            if name == "latency_ms":
                try:
                    latency_ms = float(value or "")
                except ValueError:
                    latency_ms = -1.0
                if not latency_ms >= 0:
                    raise ValueError(f"marker {m.group(0)!r}: latency_ms must be a number >= 0")
            elif name in ("fail", "fatal", "crash"):
                flags.add(name)
            elif name == "fail-while":
                if not value:
                    raise ValueError(f"marker {m.group(0)!r}: fail-while needs a file path")
                fail_while = Path(value)
            else:
                raise ValueError(f"unknown marker {m.group(0)!r}")
        return cls(
            latency_ms=latency_ms,
            fail="fail" in flags,
            fatal="fatal" in flags,
            fail_while=fail_while,
            crash="crash" in flags,
        )


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

    def __init__(
        self, *, latency_ms: float, fail_rate: float = 0.0, seed: int | None = None
    ) -> None:
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {fail_rate}")
        self.latency_ms: Final = latency_ms
        self.fail_rate: Final = fail_rate
        self._random = random.Random(seed)  # simulation, not security
        self.calls = 0
        """Number of `summarize` calls that got past the latency (success or failure)."""

    async def summarize(
        self, text: str, *, max_chars: int, on_delta: DeltaSink | None = None,
        reduce: bool = False,
    ) -> Summary:  # fmt: skip
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        try:
            faults = Faults.parse(text) if "[[simulated:" in text else Faults()
        except ValueError as e:
            raise SummarizerError(f"bad fault marker: {e}", retryable=False) from e
        latency_ms = self.latency_ms if faults.latency_ms is None else faults.latency_ms
        await asyncio.sleep(latency_ms / 1000.0)
        self.calls += 1
        if faults.crash:
            os._exit(CRASH_EXIT_CODE)  # simulates a hard crash: no cleanup, no ack
        if faults.fatal:
            raise SummarizerError("simulated permanent failure (marker fatal)", retryable=False)
        if faults.fail:
            raise SummarizerError("simulated failure (marker fail)", retryable=True)
        if faults.fail_while is not None and faults.fail_while.exists():
            raise SummarizerError(
                f"simulated failure while {faults.fail_while} exists (marker fail-while)",
                retryable=True,
            )
        if self.fail_rate > 0.0 and self._random.random() < self.fail_rate:
            raise SummarizerError("simulated failure", retryable=True)
        return Summary(text=lead_summary(text, max_chars=max_chars))

    async def aclose(self) -> None:
        return None
