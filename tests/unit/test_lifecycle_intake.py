"""When a job's message comes back, is the job past intake (the message is its timer) or
may its intake have died before publishing (to be redone)? `lifecycle.past_intake` and
`lifecycle.launched` decide, from the state alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract.messages import JobState, JobStatus, decode_job_state
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import ResultKey

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(chunks: int) -> JobState:
    return lifecycle.intake(
        job_id="job-1", title="t", skill="summarize", document_chars=chunks * 6000,
        summary_chars=1200, chunks=chunks, now=T0, timeout_s=None, document_sha256=None,
        trace_id=None, timer="$JS.ACK.JOBS.orchestrator.1.1.1.1.1.1",
    )  # fmt: skip


def test_a_new_job_is_not_past_intake_until_launched() -> None:
    job = _job(3)
    assert not job.launched and not lifecycle.past_intake(job)
    marked = lifecycle.launched(job)
    assert marked is not None and marked.launched and lifecycle.past_intake(marked)
    # bookkeeping, not progress: the no-progress clock and everything else stay
    assert marked.model_copy(update={"launched": False}) == job
    assert lifecycle.launched(marked) is None  # once


def test_results_at_level_zero_do_not_prove_every_task_was_published() -> None:
    """An intake that died half-way through publishing leaves a job whose first results
    arrive: it is still redone (the tasks never published would otherwise never run)."""
    s, _ = lifecycle.record(_job(4), [ResultKey(level=0, index=0, ok=True, task_id="0-0")], now=T0)
    assert s is not None and s.level_done == 1
    assert not lifecycle.past_intake(s)


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED])
def test_a_finished_job_is_past_intake_and_not_marked(status: JobStatus) -> None:
    done = _job(2).model_copy(update={"status": status})
    assert lifecycle.past_intake(done)
    assert lifecycle.launched(done) is None


def test_a_reducing_job_is_past_intake() -> None:
    reducing = _job(2).model_copy(update={"level": 1, "level_tasks": 1})
    assert lifecycle.past_intake(reducing) and lifecycle.launched(reducing) is None


def test_a_state_written_before_the_field_reads_as_not_launched() -> None:
    old = _job(2).model_dump(mode="json")
    del old["launched"]
    state = decode_job_state(json.dumps(old).encode())
    assert not state.launched and not lifecycle.past_intake(state)


@given(
    status=st.sampled_from(list(JobStatus)),
    level=st.integers(min_value=0, max_value=5),
    launched=st.booleans(),
    chunks=st.integers(min_value=1, max_value=5000),
)
def test_launched_is_recorded_exactly_when_it_changes_the_verdict(
    status: JobStatus, level: int, launched: bool, chunks: int
) -> None:
    state = _job(chunks).model_copy(update={"status": status, "level": level, "launched": launched})
    marked = lifecycle.launched(state)
    if lifecycle.past_intake(state):
        assert marked is None
    else:
        assert marked is not None and lifecycle.past_intake(marked)
        assert marked.updated_at == state.updated_at and marked.level_done == state.level_done
