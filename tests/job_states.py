"""A job state fresh from intake, for the unit tests of the job lifecycle."""

from __future__ import annotations

from datetime import datetime

from agentbus.contract.messages import JobState
from agentbus_orchestrator import lifecycle


def new_job(chunks: int, *, now: datetime) -> JobState:
    """A running job of `chunks` map tasks, with a timer (its message's ack subject)."""
    return lifecycle.intake(
        job_id="job-1", title="t", skill="summarize", document_chars=chunks * 6000,
        summary_chars=1200, chunks=chunks, now=now, timeout_s=None, document_sha256=None,
        trace_id=None, timer="$JS.ACK.JOBS.orchestrator.1.1.1.1.1.1",
    )  # fmt: skip
