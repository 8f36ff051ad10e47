"""The job lifecycle state machine (orchestrator.lifecycle): transitions, the bitmap of
recorded tasks, deadlines, and the property that any order and any duplication of the
same results ends in the same state and summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentbus.contract.messages import JobState, JobStatus, decode_job_state
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import Completion, NextLevel, Outcome, ResultKey

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(chunks: int, *, summary_chars: int = 1200, timeout_s: float | None = None) -> JobState:
    return lifecycle.intake(
        job_id="job-1", title="t", skill="summarize", document_chars=chunks * 6000,
        summary_chars=summary_chars, chunks=chunks, now=T0, timeout_s=timeout_s,
        document_sha256=None, trace_id=None,
    )  # fmt: skip


def _ok(level: int, index: int) -> ResultKey:
    return ResultKey(level=level, index=index, ok=True, task_id=f"{level}-{index}")


def test_record_counts_each_task_once_and_reports_outcomes() -> None:
    s = _job(10)
    new, outs = lifecycle.record(s, [_ok(0, 3), _ok(0, 3), _ok(0, 9)], now=T0)
    assert new is not None and outs == [Outcome.RECORDED, Outcome.DUPLICATE, Outcome.RECORDED]
    assert new.level_done == 2 and new.tasks_done_total == 2
    assert list(lifecycle.recorded_indices(new)) == [3, 9]
    assert s.level_done == 0  # the input state is never modified
    again, outs = lifecycle.record(new, [_ok(0, 9)], now=T0)
    assert again is None and outs == [Outcome.DUPLICATE]
    _, outs = lifecycle.record(new, [_ok(1, 0), _ok(0, 10), _ok(0, -1)], now=T0)
    assert outs == [Outcome.AHEAD, Outcome.INVALID, Outcome.INVALID]


def test_failure_fails_once_keeps_first_reason_and_successes_still_count() -> None:
    s = _job(3)
    bad = ResultKey(level=0, index=1, ok=False, task_id="0-1", error="boom")
    failed, outs = lifecycle.record(s, [bad], now=T0)
    assert failed is not None and outs == [Outcome.FAILED]
    assert failed.status is JobStatus.FAILED and failed.error == "task 0-1: boom"
    assert failed.failed_by == lifecycle.TASK_FAILURE
    other = ResultKey(level=0, index=2, ok=False, task_id="0-2", error="other")
    same, outs = lifecycle.record(failed, [other], now=T0)
    assert same is None and outs == [Outcome.DUPLICATE]
    # a replayed task succeeding: recorded, and the complete level takes the job on
    s2, _ = lifecycle.record(failed, [_ok(0, 0), _ok(0, 1), _ok(0, 2)], now=T0)
    assert s2 is not None and lifecycle.level_complete(s2)
    moved = lifecycle.next_level(s2, level=0, tasks=1, now=T0)
    assert moved is not None and moved.status is JobStatus.REDUCING and moved.error is None


def test_failure_of_a_recorded_task_changes_nothing() -> None:
    s, _ = lifecycle.record(_job(2), [_ok(0, 0)], now=T0)
    assert s is not None
    late = ResultKey(level=0, index=0, ok=False, error="late")
    new, outs = lifecycle.record(s, [late], now=T0)
    assert new is None and outs == [Outcome.DUPLICATE]
    # and in one batch with its own success
    new, outs = lifecycle.record(_job(2), [_ok(0, 1), ResultKey(0, 1, ok=False)], now=T0)
    assert new is not None and new.status is JobStatus.RUNNING and Outcome.FAILED not in outs


def test_timed_out_job_records_nothing_more() -> None:
    s = lifecycle.fail(_job(2), reason="deadline", failed_by=lifecycle.TIMEOUT_FAILURE, now=T0)
    assert s is not None and not lifecycle.resumable(s)
    new, outs = lifecycle.record(s, [_ok(0, 0), _ok(0, 1)], now=T0)
    assert new is None and outs == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert lifecycle.complete(s, level=0, summary="x", summary_ref=None, now=T0) is None


def test_one_task_level_completes_in_one_transition() -> None:
    s = _job(1)
    done = lifecycle.complete(
        s, level=0, summary="final", summary_ref=None, now=T0, final=_ok(0, 0)
    )
    assert done is not None and done.status is JobStatus.COMPLETED
    assert done.summary == "final" and done.tasks_done_total == 1
    assert lifecycle.complete(done, level=0, summary="again", summary_ref=None, now=T0) is None
    # a level that is not complete does not complete
    assert lifecycle.complete(_job(2), level=0, summary="x", summary_ref=None, now=T0) is None


def test_plan_next_completes_when_it_fits_and_reduces_otherwise() -> None:
    s = _job(3, summary_chars=100)
    assert lifecycle.plan_next(
        s, ["a", "b"], chunk_chars=1000, chunk_summary_chars=200, max_reduce_levels=8
    ) == (Completion("a\n\nb"))
    plan = lifecycle.plan_next(
        s, ["x" * 90] * 30, chunk_chars=1000, chunk_summary_chars=200, max_reduce_levels=8
    )
    assert isinstance(plan, NextLevel) and plan.level == 1
    assert all(len(g) <= 1000 for g in plan.groups) and plan.max_chars == 200
    one = lifecycle.plan_next(
        s, ["x" * 90] * 5, chunk_chars=1000, chunk_summary_chars=200, max_reduce_levels=8
    )
    assert isinstance(one, NextLevel) and len(one.groups) == 1 and one.max_chars == 100


def test_state_of_a_3500_chunk_job_stays_under_4_kib() -> None:
    s = _job(3500)
    # every other task recorded: the worst case for any run-length scheme
    s2, _ = lifecycle.record(s, [_ok(0, i) for i in range(0, 3500, 2)], now=T0)
    assert s2 is not None and s2.level_done == 1750
    size = len(s2.model_dump_json().encode())
    assert size < 4096, size
    assert decode_job_state(s2.model_dump_json().encode()) == s2
    s3, _ = lifecycle.record(s2, [_ok(0, i) for i in range(3500)], now=T0)
    assert s3 is not None and lifecycle.level_complete(s3) and lifecycle.bits_count(s3) == 3500


def test_legacy_state_with_a_list_of_indices_still_decodes() -> None:
    legacy = (
        b'{"job_id": "j", "status": "running", "chunks": 5, "level_tasks": 5,'
        b' "level_done": [4, 0, 2]}'
    )
    s = decode_job_state(legacy)
    assert s.level_done == 3 and list(lifecycle.recorded_indices(s)) == [0, 2, 4]


@given(
    age_s=st.floats(min_value=0, max_value=10_000),
    job_timeout_s=st.sampled_from([0.0, 5.0, 60.0, 3600.0]),
    no_progress_timeout_s=st.sampled_from([0.0, 2.0, 45.0, 900.0]),
)
def test_a_running_job_is_checked_again_within_the_recheck_bounds(
    age_s: float, job_timeout_s: float, no_progress_timeout_s: float
) -> None:
    """A lost ack or nak of the job's message is settled by its next check: never more
    than MAX_RECHECK_S away, whatever the deadlines."""
    v = lifecycle.check_deadline(
        _job(4), now=T0 + timedelta(seconds=age_s),
        job_timeout_s=job_timeout_s, no_progress_timeout_s=no_progress_timeout_s,
    )  # fmt: skip
    if v.reason is None and v.recheck_s is not None:
        assert lifecycle.MIN_RECHECK_S <= v.recheck_s <= lifecycle.MAX_RECHECK_S
    elif v.reason is None:  # no deadline at all: the message is acked, never rechecked
        assert job_timeout_s == 0 and no_progress_timeout_s == 0
    assert lifecycle.recheck_delay_s(900.0) == lifecycle.MAX_RECHECK_S
    assert lifecycle.recheck_delay_s(0.01) == lifecycle.MIN_RECHECK_S


def test_deadline_and_no_progress() -> None:
    s = _job(4)
    v = lifecycle.check_deadline(s, now=T0, job_timeout_s=100, no_progress_timeout_s=30)
    assert v.reason is None and v.recheck_s == 30
    v = lifecycle.check_deadline(
        s, now=T0 + timedelta(seconds=31), job_timeout_s=100, no_progress_timeout_s=30
    )
    assert v.reason is not None and "no progress" in v.reason and "0/4" in v.reason
    moving = s.model_copy(update={"updated_at": T0 + timedelta(seconds=90)})
    v = lifecycle.check_deadline(
        moving, now=T0 + timedelta(seconds=95), job_timeout_s=100, no_progress_timeout_s=30
    )
    assert v.reason is None and v.recheck_s == 5
    v = lifecycle.check_deadline(
        moving, now=T0 + timedelta(seconds=100), job_timeout_s=100, no_progress_timeout_s=30
    )
    assert v.reason is not None and "deadline" in v.reason
    own = _job(4, timeout_s=10)
    v = lifecycle.check_deadline(
        own, now=T0 + timedelta(seconds=10), job_timeout_s=100, no_progress_timeout_s=0
    )
    assert v.reason is not None and "10s" in v.reason
    assert lifecycle.check_deadline(s, now=T0, job_timeout_s=0, no_progress_timeout_s=0) == (
        lifecycle.DeadlineVerdict()
    )
    done = s.model_copy(update={"status": JobStatus.COMPLETED})
    assert (
        lifecycle.check_deadline(
            done, now=T0 + timedelta(days=9), job_timeout_s=1, no_progress_timeout_s=1
        )
        == lifecycle.DeadlineVerdict()
    )


# --- the property: order and duplication do not matter ------------------------------------


def _summarize(text: str, max_chars: int) -> str:
    """A deterministic stand-in for a summarizer."""
    return text.replace("\n\n", " ")[:max_chars].strip() or "-"


def _drive(chunks: list[str], schedule: st.DataObject | None) -> tuple[JobState, str]:
    """Run a job through the state machine the way the orchestrator does, delivering each
    level's results in an order (with repetitions and stale re-deliveries) drawn from
    `schedule` (None: in order, once each)."""
    state = _job(len(chunks), summary_chars=300)
    texts, per_task = chunks, 120 if len(chunks) > 1 else 300
    parts_store: dict[tuple[int, int], str] = {}
    old: list[ResultKey] = []
    while True:
        level = state.level
        results = [(_ok(level, i), _summarize(t, per_task)) for i, t in enumerate(texts)]
        deliveries = list(range(len(results)))
        if schedule is not None:
            deliveries = schedule.draw(st.permutations(deliveries))
            extra = schedule.draw(st.lists(st.sampled_from(range(len(results))), max_size=6))
            deliveries = deliveries + extra
            # late duplicates of finished levels arrive too
            deliveries_old = (
                schedule.draw(st.lists(st.sampled_from(old), max_size=3)) if old else []
            )
        else:
            deliveries_old = []
        for key in deliveries_old:
            new, outs = lifecycle.record(state, [key], now=T0)
            assert new is None and outs == [Outcome.DUPLICATE]
        if state.level_tasks == 1:
            key, text = results[0]
            for _ in deliveries:
                done = lifecycle.complete(
                    state, level=level, summary=text, summary_ref=None, now=T0, final=key
                )
                state = done or state
            assert state.status is JobStatus.COMPLETED
            return state, state.summary or ""
        for i in deliveries:
            key, text = results[i]
            parts_store.setdefault((level, i), text)  # first writer wins
            new, _ = lifecycle.record(state, [key], now=T0)
            state = new or state
        assert lifecycle.level_complete(state) and state.level_done == len(texts)
        old += [k for k, _ in results]
        parts = [parts_store[(level, i)] for i in range(len(texts))]
        plan = lifecycle.plan_next(
            state, parts, chunk_chars=400, chunk_summary_chars=120, max_reduce_levels=8
        )
        if isinstance(plan, Completion):
            done = lifecycle.complete(
                state, level=level, summary=plan.summary, summary_ref=None, now=T0
            )
            assert done is not None
            return done, plan.summary
        moved = lifecycle.next_level(state, level=level, tasks=len(plan.groups), now=T0)
        assert moved is not None
        assert lifecycle.next_level(moved, level=level, tasks=9, now=T0) is None
        state, texts, per_task = moved, plan.groups, plan.max_chars


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=10_000),
    data=st.data(),
)
def test_any_order_and_duplication_gives_the_same_final_state(
    n: int, seed: int, data: st.DataObject
) -> None:
    chunks = [f"Chunk {seed}-{i} says something about item {i * seed % 97}. " * 5 for i in range(n)]
    reference, ref_summary = _drive(chunks, None)
    shuffled, summary = _drive(chunks, data)
    assert summary == ref_summary and shuffled.summary == reference.summary
    assert shuffled.status is JobStatus.COMPLETED
    assert shuffled.level == reference.level
    assert shuffled.tasks_done_total == reference.tasks_done_total


def test_every_outcome_has_its_metric_label() -> None:
    from agentbus.observability import metrics

    assert tuple(o.value for o in Outcome) == metrics.RESULT_OUTCOMES
