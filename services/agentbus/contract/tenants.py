"""Tenants: who a job belongs to, and the pure rules that share the workers among tenants
and enforce each tenant's limits (no I/O: the bus and the orchestrator call these).

A job belongs to a tenant: the one of the subject it was submitted on
(`jobs.submit.{tenant}`, which NATS permissions reserve for that tenant's users), else the
`tenant` a trusted client put in the job, else `default`. Tenants are a configured,
bounded set (`AGENTBUS_TENANTS__CONFIGURED`): a name not configured is the default tenant,
with the default limits, so metric labels and consumers stay bounded.

Fair share reuses the priority machinery: each configured tenant has its own TASKS subject
and durable consumer per priority (`task_subject`, `task_consumer`; the default tenant keeps
the subjects and consumers of old), and a worker's pull for one priority is split among
the tenants' consumers by `plan_shares`, a stride scheduler: every task started adds
1 / weight to its tenant's *pass*; slots go to the lowest pass first. A tenant found
empty catches up to the others (`record_empty`), so an idle tenant banks no credit and a
tenant that arrives gets its weight's share from then on, not the whole pool.

Caps: a capped tenant (`max_in_flight` set) has exactly that many *run permits*, messages
on `tasks.{skill}.slots.{tenant}.{cap}` that are never acked: a worker pulls a permit before it
pulls one of the tenant's tasks, of any priority, holds it (unacked, kept alive as the task
is) while the task runs, and hands it back (`nak`) when the task is done. The server hands
each permit to one worker at a time, so the tenant never has more tasks running than its
cap across its priorities and every replica; a replica that dies loses its permits to
`ack_wait`, as it does its tasks. (`max_ack_pending` = cap on each of the tenant's
priority consumers holds one priority alone; three of them would allow three times the
cap, and a worker-side count of the others' tasks in flight races between replicas.)
Priorities are untouched: a permit is taken for the pull the priority loop makes anyway.

Rates and token budgets are fixed-window counters (`Window`), kept in the `tenant-usage`
KV bucket and updated by compare-and-set, so every replica counts against the same number.
Budgets hold at intake and again when a worker is about to start a task (`start_verdict`):
a job let in just before its tenant's budget was spent does not run its remaining tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentbus.contract import subjects
from agentbus.contract.messages import TokenUsage
from agentbus.contract.priority import Priority
from agentbus.contract.priority import task_consumer as priority_consumer
from agentbus.contract.priority import task_subject as priority_subject
from agentbus.contract.settings import TenantLimits, TenantsSettings

__all__ = [
    "DEFAULT_TENANT",
    "IDLE_CREDIT",
    "RATE_WINDOW_S",
    "Verdict",
    "Window",
    "admission",
    "budget_key",
    "budget_tokens",
    "budget_verdict",
    "intake_consumer",
    "intake_subject",
    "job_tenant",
    "limits_of",
    "plan_shares",
    "rate_key",
    "rate_verdict",
    "record_empty",
    "record_starts",
    "resolve",
    "slot_consumer",
    "slot_subject",
    "start_verdict",
    "task_consumer",
    "task_subject",
    "tenant_names",
]

DEFAULT_TENANT: Final = "default"
RATE_WINDOW_S: Final = 60.0
"""`jobs_per_minute` counts jobs per fixed minute (the window turns on the minute)."""


def tenant_names(cfg: TenantsSettings) -> list[str]:
    """Every tenant: `default` first, then the configured ones by name."""
    return [DEFAULT_TENANT, *sorted(cfg.configured)]


def resolve(tenant: str | None, cfg: TenantsSettings) -> str:
    """The tenant a job counts as: a configured name, else `default`."""
    return tenant if tenant is not None and tenant in cfg.configured else DEFAULT_TENANT


def job_tenant(*, subject: str, claimed: str | None, cfg: TenantsSettings) -> str:
    """The tenant of a job message: the subject's (`jobs.submit.{tenant}`: the server let
    only that tenant's users publish there) wins over the tenant claimed in the job (taken
    only from `jobs.submit`, which only trusted clients may publish on)."""
    prefix = subjects.JOBS_SUBJECT + "."
    if subject.startswith(prefix):
        return resolve(subject.removeprefix(prefix), cfg)
    return resolve(claimed, cfg)


def limits_of(tenant: str, cfg: TenantsSettings) -> TenantLimits:
    return cfg.configured.get(tenant, cfg.default)


def task_subject(skill: str, priority: Priority, tenant: str) -> str:
    """The subject of a task of `tenant` at `priority` (the default tenant: as of old)."""
    if tenant == DEFAULT_TENANT:
        return priority_subject(skill, priority)
    return subjects.tenant_task_assign(skill, priority.value, tenant)


def task_consumer(skill: str, priority: Priority, tenant: str) -> str:
    """The workers' durable consumer of `tenant`'s tasks at `priority`."""
    if tenant == DEFAULT_TENANT:
        return priority_consumer(skill, priority)
    return subjects.tenant_workers_consumer(skill, priority.value, tenant)


def slot_subject(skill: str, tenant: str, cap: int) -> str:
    """Where the `cap` run permits of a capped tenant's `skill` tasks are (see Caps above:
    a new cap has new permits, on a new subject; the old ones stay unused)."""
    return subjects.tenant_slots(skill, tenant, cap)


def slot_consumer(skill: str, tenant: str) -> str:
    return subjects.tenant_slots_consumer(skill, tenant)


def intake_subject(tenant: str) -> str:
    """Where a job of `tenant` is submitted (the default tenant: `jobs.submit`)."""
    return subjects.JOBS_SUBJECT if tenant == DEFAULT_TENANT else subjects.tenant_submit(tenant)


def intake_consumer(tenant: str) -> str:
    """The orchestrator's consumer of `tenant`'s jobs (the default tenant: `orchestrator`)."""
    if tenant == DEFAULT_TENANT:
        return subjects.ORCHESTRATOR_CONSUMER
    return subjects.tenant_orchestrator_consumer(tenant)


# --- fair share ------------------------------------------------------------------------

IDLE_CREDIT: Final = 8
"""Tasks a tenant back from idle may start before it shares by weight (`record_empty`)."""

SharePlan = list[tuple[str, int]]
"""Pulls in order: (tenant, at most this many tasks)."""


def plan_shares(
    *,
    free: int,
    passes: Mapping[str, float],
    weights: Mapping[str, int],
    exclude: frozenset[str] = frozenset(),
) -> SharePlan:
    """Split `free` slots among the tenants of `weights` not in `exclude`: slot by slot to
    the lowest pass (ties: by name), each slot adding 1 / weight to its tenant's pass.
    Tenants in the order of their first slot. The caller pulls in order and offers what a
    tenant did not fill to the next ones (work conserving)."""
    if free <= 0:
        return []
    active = sorted(t for t in weights if t not in exclude)
    if not active:
        return []
    virtual = {t: passes.get(t, 0.0) for t in active}
    counts: dict[str, int] = {}
    for _ in range(free):
        tenant = min(active, key=lambda t: (virtual[t], t))
        virtual[tenant] += 1.0 / max(1, weights[tenant])
        counts[tenant] = counts.get(tenant, 0) + 1
    return list(counts.items())


def record_starts(
    passes: Mapping[str, float], tenant: str, count: int, *, weights: Mapping[str, int]
) -> dict[str, float]:
    """`count` tasks of `tenant` started: its pass moves on by count / weight."""
    out = dict(passes)
    out[tenant] = out.get(tenant, 0.0) + count / max(1, weights.get(tenant, 1))
    return out


def record_empty(
    passes: Mapping[str, float],
    tenant: str,
    *,
    weights: Mapping[str, int] | None = None,
    credit: int = IDLE_CREDIT,
) -> dict[str, float]:
    """`tenant` had no work: its pass catches up to `credit` slots (of its weight) below
    the highest of the others, so that it banks no more than that while idle: when it
    comes back its first `credit` tasks go first (a short burst starts at once, as on an
    idle stack), then it gets its weight's share, not everything. The highest, not the
    lowest: the passes of tenants with work stay within a slot of each other, while
    another idle tenant's may be far behind (and would hold this one back there)."""
    out = dict(passes)
    others = [v for t, v in passes.items() if t != tenant]
    if others:
        weight = max(1, (weights or {}).get(tenant, 1))
        out[tenant] = max(out.get(tenant, 0.0), max(others) - credit / weight)
    return out


# --- rates and budgets ----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A fixed-window counter: `used` in window number `index` (time // window length)."""

    index: int = 0
    used: int = 0

    @staticmethod
    def index_at(now_s: float, window_s: float) -> int:
        return math.floor(now_s / window_s)

    def current(self, now_s: float, window_s: float) -> Window:
        """This counter as of `now_s`: zero once its window has turned."""
        index = self.index_at(now_s, window_s)
        return self if index == self.index else Window(index=index, used=0)

    def add(self, count: int, *, now_s: float, window_s: float) -> Window:
        cur = self.current(now_s, window_s)
        return Window(index=cur.index, used=cur.used + count)

    @staticmethod
    def seconds_left(now_s: float, window_s: float) -> float:
        """Until the window of `now_s` turns."""
        return (Window.index_at(now_s, window_s) + 1) * window_s - now_s

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "used": self.used}


def _window_verdict(
    counter: Window, *, now_s: float, window_s: float, limit: int | None
) -> float | None:
    """None: the counter is below `limit` (or there is none) in the window of `now_s`;
    else the seconds until that window turns (never 0: the caller waits)."""
    if limit is None or counter.current(now_s, window_s).used < limit:
        return None
    return max(0.001, Window.seconds_left(now_s, window_s))


def rate_verdict(counter: Window, *, now_s: float, limit: int | None) -> float | None:
    """None: one more job may be taken in now (count it); else the seconds until it may
    (the minute turns)."""
    return _window_verdict(counter, now_s=now_s, window_s=RATE_WINDOW_S, limit=limit)


def rate_key(tenant: str) -> str:
    """The `tenant-usage` key of the tenant's jobs this minute."""
    return f"{subjects.check_token(tenant, field='tenant')}.jobs"


def budget_key(tenant: str) -> str:
    """The `tenant-usage` key of the tenant's tokens this budget window."""
    return f"{subjects.check_token(tenant, field='tenant')}.tokens"


CHARS_PER_TOKEN: Final = 4
"""The usual rule of thumb for English text, for backends that report no usage."""


def budget_tokens(usage: TokenUsage | None, *, input_chars: int, output_chars: int) -> int:
    """Tokens a task counts against its tenant's budget: what the backend reported, else
    an estimate from the characters read and written (the extractive backend)."""
    if usage is not None:
        return usage.prompt_tokens + usage.completion_tokens
    return -(-(input_chars + output_chars) // CHARS_PER_TOKEN)


def budget_verdict(counter: Window, *, now_s: float, limits: TenantLimits) -> float | None:
    """None: the tenant has budget left (or none set); else the seconds until its window
    turns."""
    return _window_verdict(
        counter, now_s=now_s, window_s=limits.budget_window_s, limit=limits.token_budget
    )


@dataclass(frozen=True)
class Verdict:
    """What intake does with a job of a tenant: take it in (`hold_s` 0, no `refused`),
    hold it `hold_s` (queue / wait), or fail it with the `refused` reason."""

    outcome: str = "accepted"
    """The `agentbus_tenant_jobs_total` outcome."""
    hold_s: float = 0.0
    refused: str | None = None


def admission(
    tenant: str,
    *,
    limits: TenantLimits,
    over_budget_s: float | None,
    over_rate_s: float | None,
) -> Verdict:
    """The verdict for a job given its tenant's budget and rate verdicts (budget first: a
    job that cannot run is not counted against the rate)."""
    if over_budget_s is not None:
        wait = math.ceil(over_budget_s)
        if limits.over_budget == "fail":
            return Verdict(
                outcome="failed_budget",
                refused=f"tenant {tenant} has spent its token budget ({limits.token_budget} "
                f"tokens per {limits.budget_window_s:g} s): retry after {wait} s",
            )
        return Verdict(outcome="waiting_budget", hold_s=over_budget_s)
    if over_rate_s is not None:
        wait = math.ceil(over_rate_s)
        if limits.over_rate == "refuse":
            return Verdict(
                outcome="refused_rate",
                refused=f"tenant {tenant} is over its rate of {limits.jobs_per_minute} "
                f"jobs per minute: retry after {wait} s",
            )
        return Verdict(outcome="queued_rate", hold_s=over_rate_s)
    return Verdict()


def start_verdict(tenant: str, counter: Window, *, now_s: float, limits: TenantLimits) -> Verdict:
    """What a worker does with a task of `tenant` given its token counter: start it
    (`outcome` "accepted"), leave it queued `hold_s` (the window turns then: budget spent,
    `over_budget` "wait"), or fail its job with the `refused` reason ("fail"). The same
    rule, and the same line, as at intake (`admission`)."""
    over_s = budget_verdict(counter, now_s=now_s, limits=limits)
    return admission(tenant, limits=limits, over_budget_s=over_s, over_rate_s=None)
