"""A job's token usage in its state: the sum of its recorded tasks' usage, each task
counted once whatever the order and repetition of its results."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentbus.contract.messages import JobState, TokenUsage
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import ResultKey

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(chunks: int) -> JobState:
    return lifecycle.intake(
        job_id="job-1", title="t", skill="summarize", document_chars=chunks * 1000,
        summary_chars=200, chunks=chunks, now=T0, timeout_s=None, document_sha256=None,
        trace_id=None,
    )  # fmt: skip


def _result(index: int, usage: TokenUsage | None) -> ResultKey:
    return ResultKey(level=0, index=index, ok=True, task_id=f"0-{index}", usage=usage)


def test_usage_sums_recorded_tasks_once() -> None:
    a, b = TokenUsage(prompt_tokens=100, completion_tokens=7), TokenUsage(prompt_tokens=5)
    first, _ = lifecycle.record(_job(3), [_result(0, a), _result(0, a), _result(1, None)], now=T0)
    assert first is not None and first.usage == a
    second, _ = lifecycle.record(first, [_result(2, b), _result(0, a)], now=T0)
    assert second is not None
    assert second.usage == TokenUsage(prompt_tokens=105, completion_tokens=7)
    assert second.usage.total_tokens == 112
    assert lifecycle.record(second, [_result(2, b)], now=T0)[0] is None  # a duplicate
    assert _job(1).usage is None


USAGES = st.lists(
    st.builds(TokenUsage, prompt_tokens=st.integers(0, 10_000),
              completion_tokens=st.integers(0, 10_000)),
    min_size=1, max_size=20,
)  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(usages=USAGES, data=st.data())
def test_any_order_and_duplication_sums_exactly(
    usages: list[TokenUsage], data: st.DataObject
) -> None:
    n = len(usages)
    deliveries = data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n))
    deliveries += data.draw(st.permutations(range(n)))  # every task at least once
    state = _job(n)
    for i in deliveries:
        state = lifecycle.record(state, [_result(i, usages[i])], now=T0)[0] or state
    assert state.usage == TokenUsage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
    )
