"""Job priorities and the rule a worker uses to pick which priority to pull next (pure).

A job is `high`, `normal` (the default) or `low`; its map and reduce tasks carry its
priority, each priority on its own subject of the TASKS stream, read by its own durable
consumer (`agentbus.contract.subjects.task_assign`, `workers_consumer`).

Why subjects and consumers per priority, not NATS priority groups: the priority groups of
nats-server 2.11+ (`overflow`, `pinned_client`, 2.12's `prioritized`) rank the *pull
requests* of one consumer (which client gets the next message), never the *messages*: a
consumer hands out its stream in sequence order, so a high-priority task published after
2,000 normal ones would still come 2,001st. One consumer per priority lets a worker
choose what it pulls, with the same work-queue, ack, redelivery and dead-letter
semantics as before, the normal consumer keeping its name and subject (deployments,
dashboards and KEDA triggers on `summarize-workers` keep working).

The rule (`plan_pulls`): higher priority first, but a lower priority that has work is
never passed over for long: every task started at a higher priority adds one to each
lower priority's `skipped` count; a priority whose count reached its `patience` is
*due* and is offered its owed slots first. So with every queue full, at most `patience`
tasks of higher priority start before one of a due priority: normal keeps at least
1 / (patience + 1) of the slots against high, low at least 1 / (patience + 1) against
both (defaults below: high still gets 80% while normal competes, low 10%).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from agentbus.contract import subjects

__all__ = [
    "DEFAULT_PATIENCE",
    "PRIORITIES",
    "Priority",
    "PullPlan",
    "plan_pulls",
    "rank",
    "record_empty",
    "record_starts",
    "task_consumer",
    "task_subject",
]


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITIES: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""Highest first."""

DEFAULT_PATIENCE: Final[Mapping[Priority, int]] = {
    Priority.HIGH: 0,  # (never waits: nothing ranks above it)
    Priority.NORMAL: 4,
    Priority.LOW: 9,
}
"""Tasks of higher priority that may start while a lower one has work, before it is due."""

PullPlan = list[tuple[Priority, int]]
"""Pulls in order: (priority, at most this many tasks)."""


def rank(priority: Priority) -> int:
    """0 for high, 2 for low."""
    return PRIORITIES.index(priority)


def task_subject(skill: str, priority: Priority) -> str:
    """The subject a task of `priority` is published on (normal: the one of old)."""
    if priority is Priority.NORMAL:
        return subjects.task_assign(skill)
    return subjects.priority_task_assign(skill, priority.value)


def task_consumer(skill: str, priority: Priority) -> str:
    """The workers' durable consumer of `priority` (normal: `{skill}-workers`, as of old)."""
    if priority is Priority.NORMAL:
        return subjects.workers_consumer(skill)
    return subjects.priority_workers_consumer(skill, priority.value)


def plan_pulls(
    *,
    free: int,
    skipped: Mapping[Priority, int],
    patience: Mapping[Priority, int] = DEFAULT_PATIENCE,
    exclude: frozenset[Priority] = frozenset(),
) -> PullPlan:
    """The pulls to make for `free` slots: due priorities first (the most starved, i.e.
    the lowest, first), each for the slots it is owed, then every priority not in
    `exclude` (known empty, or with a request open) from high to low for what is left.
    The caller pulls in order, subtracting what each pull delivered from `free`, and
    skips a priority that already delivered less than it was asked for."""
    if free <= 0:
        return []
    plan: PullPlan = []
    for p in reversed(PRIORITIES):
        wait = patience.get(p, 0)
        if p in exclude or wait <= 0 or skipped.get(p, 0) < wait:
            continue
        plan.append((p, min(free, skipped[p] // wait)))
    # then everyone from high to low for the slots left (a due priority too: work
    # conserving when the others run dry)
    plan.extend((p, free) for p in PRIORITIES if p not in exclude)
    return plan


def record_starts(
    skipped: Mapping[Priority, int],
    priority: Priority,
    count: int,
    *,
    patience: Mapping[Priority, int] = DEFAULT_PATIENCE,
) -> dict[Priority, int]:
    """`count` tasks of `priority` started: each priority below it waited `count` more;
    each start pays `patience` of its own debt (one owed slot), never below zero."""
    out = {p: skipped.get(p, 0) for p in PRIORITIES}
    if count <= 0:
        return out
    for p in PRIORITIES:
        if rank(p) > rank(priority):
            out[p] += count
    out[priority] = max(0, out[priority] - count * max(1, patience.get(priority, 1)))
    return out


def record_empty(skipped: Mapping[Priority, int], priority: Priority) -> dict[Priority, int]:
    """`priority` had no work: nobody starved it, its count starts over."""
    out = {p: skipped.get(p, 0) for p in PRIORITIES}
    out[priority] = 0
    return out
