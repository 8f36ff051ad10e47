"""When a job's message comes back, is it the job's timer or an intake to redo? The state
alone decides (`lifecycle.past_intake`, `published`, `reopenable`, `is_timer`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract.messages import JobState, JobStatus, decode_job_state
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import ResultKey
from tests.job_states import new_job

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(chunks: int) -> JobState:
    return new_job(chunks, now=T0)


@pytest.mark.parametrize("chunks", [1, 2, 5000])
def test_a_new_job_is_publishing_until_recorded_as_published(chunks: int) -> None:
    job = _job(chunks)
    assert job.publishing and not lifecycle.past_intake(job)
    assert not lifecycle.is_timer(job, replay=False)
    done = lifecycle.published(job)
    assert done is not None and not done.publishing
    assert lifecycle.past_intake(done) and lifecycle.is_timer(done, replay=False)
    # bookkeeping, not progress: the no-progress clock and everything else stay
    assert done.model_copy(update={"publishing": True}) == job
    assert lifecycle.published(done) is None  # once


def test_results_at_level_zero_do_not_prove_every_task_was_published() -> None:
    """An intake that died half-way through publishing leaves a job whose first results
    arrive: it is still redone (the tasks never published would otherwise never run)."""
    s, _ = lifecycle.record(_job(4), [ResultKey(level=0, index=0, ok=True, task_id="0-0")], now=T0)
    assert s is not None and s.level_done == 1 and s.publishing
    assert not lifecycle.past_intake(s)


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED])
def test_a_finished_job_is_past_intake_and_needs_no_record(status: JobStatus) -> None:
    done = _job(2).model_copy(update={"status": status})
    assert lifecycle.past_intake(done) and lifecycle.is_timer(done, replay=False)
    assert lifecycle.published(done) is None


def test_a_reducing_job_is_past_intake() -> None:
    reducing = _job(2).model_copy(update={"level": 1, "level_tasks": 1})
    assert lifecycle.past_intake(reducing) and lifecycle.published(reducing) is None


def test_states_written_before_the_field_read_as_published() -> None:
    """An upgrade neither redoes nor fails the intake of a job running at the time."""
    old = _job(2).model_dump(mode="json")
    del old["publishing"]
    state = decode_job_state(json.dumps(old).encode())
    assert not state.publishing and lifecycle.is_timer(state, replay=False)


@pytest.mark.parametrize(
    ("failed_by", "level_done", "reopens"),
    [("intake", 0, True), ("rejected", 0, True), (None, 0, True), ("intake", 1, False),
     ("task", 0, False), ("timeout", 0, False), ("rate", 0, False)],
)  # fmt: skip
def test_a_replayed_dead_letter_reopens_only_a_job_failed_at_intake(
    failed_by: str | None, level_done: int, reopens: bool
) -> None:
    failed = _job(3).model_copy(
        update={"status": JobStatus.FAILED, "failed_by": failed_by, "level_done": level_done}
    )
    assert lifecycle.reopenable(failed) is reopens
    assert lifecycle.is_timer(failed, replay=True) is not reopens
    assert lifecycle.is_timer(failed, replay=False)  # a redelivery never reopens


def test_a_replayed_message_of_a_running_job_is_its_timer() -> None:
    """Once a replay has reopened a job, its message's returns are its deadline checks
    (not intakes counted against max_deliver)."""
    running = lifecycle.published(_job(3))
    assert running is not None and lifecycle.is_timer(running, replay=True)


@given(
    status=st.sampled_from(list(JobStatus)),
    level=st.integers(min_value=0, max_value=5),
    publishing=st.booleans(),
    replay=st.booleans(),
    chunks=st.integers(min_value=1, max_value=5000),
)
def test_published_is_recorded_exactly_when_it_changes_the_verdict(
    status: JobStatus, level: int, publishing: bool, replay: bool, chunks: int
) -> None:
    state = _job(chunks).model_copy(
        update={"status": status, "level": level, "publishing": publishing}
    )
    done = lifecycle.published(state)
    if lifecycle.past_intake(state):
        assert done is None
    else:
        assert done is not None and lifecycle.past_intake(done)
        assert done.updated_at == state.updated_at and done.level_done == state.level_done
    # a replay reopens a job failed at intake; any other return of a job past intake
    # is its timer
    assert lifecycle.is_timer(state, replay=replay) is (
        lifecycle.past_intake(state) and not (replay and lifecycle.reopenable(state))
    )
    assert lifecycle.is_timer(state, replay=False) is lifecycle.past_intake(state)


def test_an_ended_job_is_no_longer_publishing() -> None:
    one = _job(1)
    done = lifecycle.complete(
        one, level=0, summary="s", summary_ref=None, now=T0,
        final=ResultKey(level=0, index=0, ok=True, task_id="0-0"),
    )  # fmt: skip
    failed = lifecycle.fail(one, reason="r", failed_by="task", now=T0)
    canceled = lifecycle.cancel(one, reason="", now=T0)
    for ended in (done, failed, canceled):
        assert ended is not None and ended.status.terminal and not ended.publishing
