"""The summarizer backend interface: a `Summarizer` turns one text into one `Summary`.

Backends are async and own their resources (HTTP sessions, thread pools); the worker
calls `aclose` once at shutdown. A backend raises `SummarizerError` on failure and must
return a summary of at most `max_chars` characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agentbus.contract.messages import TokenUsage

__all__ = ["DeltaSink", "Summarizer", "Summary"]


@dataclass(frozen=True, slots=True)
class Summary:
    """One summary, with the token usage of the model call when the backend reports it."""

    text: str
    usage: TokenUsage | None = None


class DeltaSink(Protocol):
    """Takes the text of a summary as the model writes it (token deltas, in order);
    `restart=True` drops what came before (the backend retried the request)."""

    def __call__(self, text: str, *, restart: bool = False) -> None: ...


class Summarizer(Protocol):
    """A summarizer backend."""

    name: str
    """Short backend name, used in metrics labels and events (`extractive`, `openai`)."""

    async def summarize(
        self, text: str, *, max_chars: int, on_delta: DeltaSink | None = None,
        reduce: bool = False,
    ) -> Summary:  # fmt: skip
        """Summarize `text` in at most `max_chars` characters; a backend that streams
        passes the text to `on_delta` as it is written (others ignore it). `reduce`: the
        text is summaries of consecutive parts of one document (a reduce step), not a
        part of the document itself (a model backend prompts for each differently).

        Raises `ValueError` if `max_chars < 1` and `SummarizerError` if the backend fails.
        """
        ...

    async def aclose(self) -> None:
        """Release the backend's resources; the summarizer is not used afterwards."""
        ...
