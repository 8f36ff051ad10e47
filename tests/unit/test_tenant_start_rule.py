"""The rules a worker applies before it starts a tenant's task (pure): the token budget
verdict at the start (`start_verdict`: the same as at intake), the window check shared by
rates and budgets, and the wire names of a capped tenant's run permits."""

from __future__ import annotations

import re
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract.settings import TenantLimits
from agentbus.contract.tenants import (
    RATE_WINDOW_S,
    Window,
    admission,
    budget_verdict,
    rate_verdict,
    slot_consumer,
    slot_subject,
    start_verdict,
)

pytestmark = pytest.mark.unit

NOW = st.floats(0, 4e9, allow_nan=False)
WINDOW = st.sampled_from([0.5, 2.0, 5.0, 60.0, 3600.0])
BUDGET = st.integers(1, 10_000)
USED = st.integers(0, 20_000)


@given(now=NOW, window=WINDOW, budget=BUDGET, used=USED, mode=st.sampled_from(["wait", "fail"]))
def test_a_task_starts_while_its_tenant_has_budget_left_in_the_window(
    now: float, window: float, budget: int, used: int, mode: Literal["wait", "fail"]
) -> None:
    limits = TenantLimits(token_budget=budget, budget_window_s=window, over_budget=mode)
    counter = Window(index=Window.index_at(now, window), used=used)
    v = start_verdict("acme", counter, now_s=now, limits=limits)
    if used < budget:
        assert v.outcome == "accepted" and v.hold_s == 0 and v.refused is None
    elif mode == "wait":  # held until the window turns, never for longer than one
        assert v.outcome == "waiting_budget" and v.refused is None
        assert 0 < v.hold_s <= window + 1e-6
        assert v.hold_s == max(0.001, Window.seconds_left(now, window))
    else:  # the job fails: one line naming the tenant, the budget and the window
        assert v.outcome == "failed_budget" and v.hold_s == 0 and v.refused is not None
        assert "\n" not in v.refused
        assert re.fullmatch(
            rf"tenant acme has spent its token budget \({budget} tokens per {window:g} s\): "
            r"retry after \d+ s",
            v.refused,
        ), v.refused
    # the very rule of intake
    over = budget_verdict(counter, now_s=now, limits=limits)
    assert v == admission("acme", limits=limits, over_budget_s=over, over_rate_s=None)


@given(now=NOW, window=WINDOW, used=USED)
def test_a_spent_budget_of_a_past_window_holds_nothing(
    now: float, window: float, used: int
) -> None:
    limits = TenantLimits(token_budget=1, budget_window_s=window, over_budget="fail")
    old = Window(index=Window.index_at(now, window) - 1, used=used)
    assert start_verdict("acme", old, now_s=now, limits=limits).outcome == "accepted"


@given(now=NOW, used=USED)
def test_without_a_budget_every_task_starts(now: float, used: int) -> None:
    counter = Window(index=Window.index_at(now, 60.0), used=used)
    assert start_verdict("acme", counter, now_s=now, limits=TenantLimits()).outcome == "accepted"


@given(now=NOW, limit=BUDGET, used=USED)
def test_rates_and_budgets_share_one_window_rule(now: float, limit: int, used: int) -> None:
    """A budget over a minute window says what a rate of the same limit says."""
    counter = Window(index=Window.index_at(now, RATE_WINDOW_S), used=used)
    limits = TenantLimits(token_budget=limit, budget_window_s=RATE_WINDOW_S)
    assert budget_verdict(counter, now_s=now, limits=limits) == rate_verdict(
        counter, now_s=now, limit=limit
    )


def test_a_capped_tenants_permits_have_their_own_subject_and_consumer() -> None:
    # the cap is in the subject: a new cap has new permits (nothing is ever deleted)
    assert slot_subject("summarize", "acme", 20) == "tasks.summarize.slots.acme.20"
    assert slot_consumer("summarize", "acme") == "summarize-slots-acme"
    with pytest.raises(ValueError, match="tenant"):
        slot_subject("summarize", "a.b", 20)
