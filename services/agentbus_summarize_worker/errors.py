"""Errors of the summarize worker and its summarizer backends.

`SummarizerError.retryable` tells the task loop what to do with a failed task: a
retryable error is `nak`-ed with backoff (the task is delivered again), a permanent one
fails the task at once (it goes to the DLQ and the job is marked failed).
"""

from __future__ import annotations

__all__ = ["SummarizeWorkerError", "SummarizerError"]


class SummarizeWorkerError(Exception):
    """Base of every error raised by the summarize worker."""


class SummarizerError(SummarizeWorkerError):
    """A summarizer backend could not produce a summary.

    `retryable` is True for transient failures (timeouts, overload, a flaky backend) and
    False for permanent ones (misconfiguration, a request the backend will never accept).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable: bool = retryable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, retryable={self.retryable})"
