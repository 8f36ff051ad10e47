"""The pull-order rule of priorities (`agentbus.contract.priority`): high first, a lower
priority with work never waits more than its patience, and the wire names per priority."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbus.contract import subjects
from agentbus.contract.messages import JobSubmit, TaskAssign, decode, encode
from agentbus.contract.priority import (
    DEFAULT_PATIENCE,
    PRIORITIES,
    Priority,
    plan_pulls,
    record_empty,
    record_starts,
    task_consumer,
    task_subject,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ZERO = dict.fromkeys(PRIORITIES, 0)


def simulate(
    backlog: dict[Priority, int], *, free_per_round: int, rounds: int
) -> tuple[list[Priority], dict[Priority, int]]:
    """Run the rule against queues holding `backlog` tasks (-1: endless): the starts in
    order, and the longest run of higher-priority starts each priority waited through."""
    left = dict(backlog)
    skipped = dict(ZERO)
    starts: list[Priority] = []
    waited = dict(ZERO)
    longest = dict(ZERO)
    for _ in range(rounds):
        free = free_per_round
        drained: set[Priority] = set()
        for priority, owed in plan_pulls(free=free, skipped=skipped):
            want = min(owed, free)
            if want <= 0:
                break
            if priority in drained:
                continue
            have = left[priority]
            got = want if have < 0 else min(want, have)
            if have > 0:
                left[priority] -= got
            if got < want:
                drained.add(priority)
            if got == 0:
                skipped = record_empty(skipped, priority)
                continue
            skipped = record_starts(skipped, priority, got)
            for _ in range(got):
                starts.append(priority)
                for p in PRIORITIES:
                    if p is priority:
                        waited[p] = 0
                    elif left[p] != 0:
                        waited[p] += 1
                        longest[p] = max(longest[p], waited[p])
            free -= got
    return starts, longest


def test_high_first_when_nothing_is_due() -> None:
    assert plan_pulls(free=4, skipped=ZERO) == [
        (Priority.HIGH, 4), (Priority.NORMAL, 4), (Priority.LOW, 4),
    ]  # fmt: skip


def test_a_due_priority_goes_first_for_what_it_is_owed() -> None:
    skipped = {Priority.HIGH: 0, Priority.NORMAL: 4, Priority.LOW: 19}
    plan = plan_pulls(free=8, skipped=skipped)
    assert plan[:2] == [(Priority.LOW, 2), (Priority.NORMAL, 1)]
    # then all from high to low (due ones too, for slots the others leave)
    assert plan[2:] == [(Priority.HIGH, 8), (Priority.NORMAL, 8), (Priority.LOW, 8)]


def test_excluded_priorities_are_not_pulled_and_no_slots_no_plan() -> None:
    plan = plan_pulls(free=2, skipped=ZERO, exclude=frozenset({Priority.HIGH}))
    assert [p for p, _ in plan] == [Priority.NORMAL, Priority.LOW]
    assert plan_pulls(free=0, skipped=ZERO) == []


def test_record_starts_and_empty() -> None:
    after = record_starts(ZERO, Priority.HIGH, 3)
    assert after == {Priority.HIGH: 0, Priority.NORMAL: 3, Priority.LOW: 3}
    paid = record_starts({**ZERO, Priority.LOW: 10}, Priority.LOW, 1)
    assert paid[Priority.LOW] == 10 - DEFAULT_PATIENCE[Priority.LOW]
    assert record_empty(after, Priority.NORMAL)[Priority.NORMAL] == 0


def test_backlog_of_normal_then_high_overtakes() -> None:
    starts, _ = simulate({Priority.HIGH: 20, Priority.NORMAL: -1, Priority.LOW: 0},
                         free_per_round=1, rounds=40)  # fmt: skip
    # high takes 4 of every 5 slots until it is done: all 20 within the first 25 starts
    assert starts[:25].count(Priority.HIGH) == 20
    assert Counter(starts[:25])[Priority.NORMAL] == 5


def test_low_progresses_under_a_full_backlog_of_both_others() -> None:
    starts, _ = simulate({Priority.HIGH: -1, Priority.NORMAL: -1, Priority.LOW: -1},
                         free_per_round=2, rounds=500)  # fmt: skip
    share = Counter(starts)
    assert share[Priority.LOW] / len(starts) >= 1 / (DEFAULT_PATIENCE[Priority.LOW] + 1) - 0.01
    assert share[Priority.HIGH] > share[Priority.NORMAL] > 0


@settings(max_examples=200, deadline=None)
@given(
    backlog=st.fixed_dictionaries({p: st.integers(min_value=-1, max_value=60) for p in PRIORITIES}),
    free=st.integers(min_value=1, max_value=8),
)
def test_no_priority_with_work_waits_beyond_its_patience(
    backlog: dict[Priority, int], free: int
) -> None:
    starts, longest = simulate(backlog, free_per_round=free, rounds=80)
    # a round is taken whole before the next plan: a due priority may wait out one round
    for p in (Priority.NORMAL, Priority.LOW):
        assert longest[p] <= DEFAULT_PATIENCE[p] + 2 * free
    # work conserving: every round fills its slots while any queue has work
    total = sum(n for n in backlog.values() if n > 0)
    endless = any(n < 0 for n in backlog.values())
    assert len(starts) == (80 * free if endless else min(total, 80 * free))


@settings(max_examples=200, deadline=None)
@given(
    skipped=st.fixed_dictionaries(
        {p: st.integers(min_value=0, max_value=1000) for p in PRIORITIES}
    ),
    free=st.integers(min_value=0, max_value=64),
    exclude=st.frozensets(st.sampled_from(PRIORITIES)),
)
def test_plan_is_due_ones_then_every_allowed_priority_within_the_free_slots(
    skipped: dict[Priority, int], free: int, exclude: frozenset[Priority]
) -> None:
    plan = plan_pulls(free=free, skipped=skipped, exclude=exclude)
    names = [p for p, _ in plan]
    allowed = set(PRIORITIES) - exclude if free > 0 else set()
    assert set(names) == allowed
    assert all(1 <= n <= free for _, n in plan)
    due = [
        p
        for p in reversed(PRIORITIES)
        if p in allowed and p is not Priority.HIGH and skipped[p] >= DEFAULT_PATIENCE[p]
    ]
    assert names[: len(due)] == due  # due ones first, the lowest first
    assert all(n == min(free, skipped[p] // DEFAULT_PATIENCE[p]) for p, n in plan[: len(due)])
    rest = names[len(due) :]
    assert rest == [p for p in PRIORITIES if p in allowed]  # then all, high to low


def test_wire_names_per_priority() -> None:
    assert task_subject("summarize", Priority.NORMAL) == subjects.task_assign("summarize")
    assert task_subject("summarize", Priority.HIGH) == "tasks.summarize.assign.high"
    assert task_consumer("summarize", Priority.NORMAL) == subjects.WORKERS_CONSUMER
    assert task_consumer("summarize", Priority.LOW) == "summarize-workers-low"


def test_normal_priority_stays_off_the_wire() -> None:
    """A release before priorities (`extra="forbid"`) still decodes normal jobs/tasks."""
    job = JobSubmit(job_id="j1", text="x")
    assert b"priority" not in encode(job, sender="t")
    high = JobSubmit(job_id="j1", text="x", priority=Priority.HIGH)
    assert decode(encode(high, sender="t"), JobSubmit).payload.priority is Priority.HIGH
    task = TaskAssign(job_id="j", task_id="0-0", level=0, index=0, count=1, text="t",
                      max_chars=100)  # fmt: skip
    assert b"priority" not in encode(task, sender="t")
