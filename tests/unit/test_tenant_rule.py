"""The tenant rules (pure): who owns a job, the fair-share split by weight, fixed-window
counters for rates and budgets, the tenants' wire names and settings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbus.contract import subjects
from agentbus.contract.errors import ConfigError
from agentbus.contract.priority import PRIORITIES, Priority
from agentbus.contract.settings import TenantLimits, TenantsSettings, load_settings
from agentbus.contract.tenants import (
    DEFAULT_TENANT,
    IDLE_CREDIT,
    Window,
    job_tenant,
    limits_of,
    plan_shares,
    rate_verdict,
    record_empty,
    record_starts,
    resolve,
    task_consumer,
    task_subject,
    tenant_names,
)

pytestmark = pytest.mark.unit

CFG = TenantsSettings(
    configured={"acme": TenantLimits(weight=3, max_in_flight=7), "beta": TenantLimits()}
)
WEIGHTS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 10), min_size=1, max_size=4
)


def _run_backlogged(weights: dict[str, int], *, slots: int, batch: int) -> dict[str, int]:
    """Every tenant always has work: how many slots each gets, `batch` at a time."""
    passes: dict[str, float] = dict.fromkeys(weights, 0.0)
    got = dict.fromkeys(weights, 0)
    for _ in range(slots // batch):
        for tenant, n in plan_shares(free=batch, passes=passes, weights=weights):
            passes = record_starts(passes, tenant, n, weights=weights)
            got[tenant] += n
    return got


def test_tenant_of_a_job_subject_wins_over_the_claim() -> None:
    assert job_tenant(subject="jobs.submit.acme", claimed="beta", cfg=CFG) == "acme"
    assert job_tenant(subject="jobs.submit", claimed="beta", cfg=CFG) == "beta"
    assert job_tenant(subject="jobs.submit", claimed=None, cfg=CFG) == DEFAULT_TENANT
    # not configured: the default tenant (a bounded set of labels and consumers)
    assert job_tenant(subject="jobs.submit.nobody", claimed=None, cfg=CFG) == DEFAULT_TENANT
    assert resolve("nobody", CFG) == DEFAULT_TENANT
    assert limits_of("nobody", CFG) is CFG.default and limits_of("acme", CFG).weight == 3
    assert tenant_names(CFG) == [DEFAULT_TENANT, "acme", "beta"]


def test_wire_names_keep_the_default_tenant_on_the_subjects_of_old() -> None:
    for p in PRIORITIES:
        assert task_subject("summarize", p, DEFAULT_TENANT).count(".") in (2, 3)
    assert task_subject("summarize", Priority.NORMAL, DEFAULT_TENANT) == "tasks.summarize.assign"
    assert task_consumer("summarize", Priority.NORMAL, DEFAULT_TENANT) == "summarize-workers"
    assert task_subject("summarize", Priority.HIGH, "acme") == "tasks.summarize.assign.high.acme"
    assert task_consumer("summarize", Priority.LOW, "acme") == "summarize-workers-low-acme"
    assert subjects.tenant_submit("acme") == "jobs.submit.acme"
    with pytest.raises(ValueError, match="tenant"):
        subjects.tenant_submit("a.b")


@given(weights=WEIGHTS, free=st.integers(0, 64), exclude=st.sets(st.sampled_from("abcd")))
def test_a_plan_hands_out_exactly_the_free_slots_to_active_tenants(
    weights: dict[str, int], free: int, exclude: set[str]
) -> None:
    plan = plan_shares(free=free, passes={}, weights=weights, exclude=frozenset(exclude))
    active = set(weights) - exclude
    assert sum(n for _, n in plan) == (free if active else 0)
    assert {t for t, _ in plan} <= active
    assert all(n > 0 for _, n in plan) and len({t for t, _ in plan}) == len(plan)


@settings(max_examples=50)
@given(weights=WEIGHTS, batch=st.integers(1, 8))
def test_backlogged_tenants_share_by_weight(weights: dict[str, int], batch: int) -> None:
    slots = 2_000 * batch
    got = _run_backlogged(weights, slots=slots, batch=batch)
    total_weight = sum(weights.values())
    for tenant, w in weights.items():
        # within one batch of the exact share, at any scale
        assert abs(got[tenant] - slots * w / total_weight) <= batch + 1


def test_three_to_one() -> None:
    got = _run_backlogged({"a": 3, "b": 1}, slots=4_000, batch=4)
    assert got == {"a": 3_000, "b": 1_000}


def test_an_idle_tenant_banks_no_credit() -> None:
    # `default` stays idle throughout: an idle tenant must not hold another one back
    weights = {"a": 1, "b": 1, "default": 1}
    passes: dict[str, float] = dict.fromkeys(weights, 0.0)
    for _ in range(1_000):  # a alone for a long time; b and default found empty each round
        passes = record_starts(passes, "a", 1, weights=weights)
        passes = record_empty(passes, "b", weights=weights)
        passes = record_empty(passes, "default", weights=weights)
    # b comes back: its first IDLE_CREDIT tasks go first, then it gets its share (about
    # half) from now on, not the next 1,000 slots
    got = {"a": 0, "b": 0}
    for _ in range(100):
        plan = plan_shares(free=1, passes=passes, weights=weights, exclude=frozenset({"default"}))
        for tenant, n in plan:
            passes = record_starts(passes, tenant, n, weights=weights)
            got[tenant] += n
    assert got["b"] == 54  # (100 - 8) / 2 + 8


def test_fixed_windows_count_and_turn() -> None:
    w = Window().add(1, now_s=125.0, window_s=60.0)
    assert w == Window(index=2, used=1)
    w = w.add(4, now_s=179.9, window_s=60.0)
    assert w.used == 5 and w.current(180.0, 60.0) == Window(index=3, used=0)
    assert Window.seconds_left(125.0, 60.0) == pytest.approx(55.0)


def test_rate_verdict_says_when_to_retry() -> None:
    full = Window(index=2, used=10)
    assert rate_verdict(full, now_s=150.0, limit=10) == pytest.approx(30.0)
    assert rate_verdict(full, now_s=150.0, limit=11) is None
    assert rate_verdict(full, now_s=150.0, limit=None) is None
    assert rate_verdict(full, now_s=181.0, limit=10) is None  # the minute turned


def test_tenant_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENTBUS_TENANTS__CONFIGURED", '{"acme": {"weight": 3, "jobs_per_minute": 60}}'
    )
    monkeypatch.setenv("AGENTBUS_TENANTS__DEFAULT__MAX_IN_FLIGHT", "12")
    s = load_settings()
    assert s.tenants.configured["acme"].weight == 3
    assert s.tenants.configured["acme"].jobs_per_minute == 60
    assert s.tenants.default.max_in_flight == 12


@pytest.mark.parametrize("name", ["default", "Has.Dot", "UPPER", ""])
def test_bad_tenant_names_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("AGENTBUS_TENANTS__CONFIGURED", f'{{"{name}": {{}}}}')
    with pytest.raises(ConfigError, match="AGENTBUS_TENANTS__CONFIGURED") as e:
        load_settings()
    assert "\n" not in str(e.value)


@given(weights=WEIGHTS, rounds=st.integers(1, 200))
def test_an_idle_tenant_never_gets_more_than_its_credit_ahead(
    weights: dict[str, int], rounds: int
) -> None:
    names = sorted(weights)
    passes: dict[str, float] = dict.fromkeys(names, 0.0)
    for i in range(rounds):
        busy = names[i % len(names)]
        passes = record_starts(passes, busy, 1 + i % 3, weights=weights)
        for t in names:
            if t != busy:
                passes = record_empty(passes, t, weights=weights)
    top = max(passes.values())
    for t in names:
        assert passes[t] >= top - IDLE_CREDIT / weights[t] - 1e-9
