"""Cancel in the job lifecycle (orchestrator.lifecycle): final from any unfinished state,
idempotent, and nothing recorded, completed or reduced after it whatever arrives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract.messages import JobState, JobStatus
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import Outcome, ResultKey
from tests.job_states import new_job

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)


def _job(chunks: int) -> JobState:
    return new_job(chunks, now=T0)


def _ok(level: int, index: int) -> ResultKey:
    return ResultKey(level=level, index=index, ok=True, task_id=f"{level}-{index}")


def test_cancel_a_running_job_keeps_its_timer_and_progress() -> None:
    s, _ = lifecycle.record(_job(10), [_ok(0, 1), _ok(0, 2)], now=T0)
    assert s is not None
    c = lifecycle.cancel(s, reason="not needed", now=T1)
    assert c is not None
    assert c.status is JobStatus.CANCELED and c.status.terminal
    assert c.error == "canceled: not needed" and c.updated_at == T1
    assert c.timer == s.timer and c.level_done == 2
    assert not lifecycle.resumable(c)
    verdict = lifecycle.cancel_detail(s, c)
    assert verdict.canceled and verdict.status is JobStatus.CANCELED
    assert "canceled" in verdict.detail and "2/10" in verdict.detail


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED])
def test_cancel_a_finished_job_changes_nothing(status: JobStatus) -> None:
    done = _job(3).model_copy(update={"status": status})
    assert lifecycle.cancel(done, reason="", now=T1) is None
    verdict = lifecycle.cancel_detail(done, None)
    assert not verdict.canceled and verdict.status is status
    assert "nothing" in verdict.detail and "\n" not in verdict.detail


def test_canceled_job_records_nothing_and_starts_no_level() -> None:
    s, _ = lifecycle.record(_job(2), [_ok(0, 0)], now=T0)
    assert s is not None
    c = lifecycle.cancel(s, reason="", now=T1)
    assert c is not None and c.error == "canceled"
    new, outs = lifecycle.record(c, [_ok(0, 1)], now=T1)
    assert new is None and outs == [Outcome.DUPLICATE]
    assert not lifecycle.level_complete(c)
    # even a state whose level is complete: no next level, no completion, no failure
    full = c.model_copy(update={"level_done": 2})
    assert not lifecycle.level_complete(full)
    assert lifecycle.next_level(full, level=0, tasks=1, now=T1) is None
    assert lifecycle.complete(full, level=0, summary="x", summary_ref=None, now=T1) is None
    assert lifecycle.fail(c, reason="late", failed_by="task", now=T1) is None
    verdict = lifecycle.check_deadline(c, now=T1, job_timeout_s=1, no_progress_timeout_s=1)
    assert verdict.reason is None and verdict.recheck_s is None


def test_cancel_before_intake_is_a_tombstone() -> None:
    t = lifecycle.canceled_before_intake("job-2", reason="r", now=T0)
    assert t.status is JobStatus.CANCELED and t.job_id == "job-2" and t.chunks == 0
    assert lifecycle.cancel(t, reason="again", now=T1) is None


@given(
    chunks=st.integers(1, 64),
    before=st.lists(st.tuples(st.integers(0, 70), st.booleans()), max_size=40),
    after=st.lists(st.tuples(st.integers(0, 70), st.booleans()), max_size=40),
)
def test_whatever_arrives_after_a_cancel_nothing_changes(
    chunks: int, before: list[tuple[int, bool]], after: list[tuple[int, bool]]
) -> None:
    state = _job(chunks)
    for index, ok in before:
        new, _ = lifecycle.record(
            state, [ResultKey(level=0, index=index, ok=ok, error="e")], now=T0
        )
        state = new or state
    canceled = lifecycle.cancel(state, reason="stop", now=T1)
    if state.status.terminal:
        assert canceled is None
        return
    assert canceled is not None
    for index, ok in after:
        new, outs = lifecycle.record(
            canceled, [ResultKey(level=0, index=index, ok=ok, error="e")], now=T1
        )
        assert new is None and outs == [Outcome.DUPLICATE]
    assert lifecycle.cancel(canceled, reason="again", now=T1) is None
    assert not lifecycle.level_complete(canceled)
