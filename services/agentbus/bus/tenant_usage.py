"""Per-tenant counters in the `tenant-usage` KV bucket: jobs this minute, tokens this
budget window (`agentbus.contract.tenants.Window`), shared by every replica.

Each update is a compare-and-set on the key's revision (a writer that lost the race
reads again and retries), so replicas of the orchestrator count against one number and
none is lost or counted twice by a race. The counter is JSON `{"index": .., "used": ..}`;
a counter of a past window reads as zero.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors

from agentbus.bus.core import Bus
from agentbus.contract import subjects
from agentbus.contract.errors import BusError
from agentbus.contract.priority import PRIORITIES
from agentbus.contract.settings import TenantsSettings
from agentbus.contract.tenants import (
    RATE_WINDOW_S,
    Window,
    budget_key,
    limits_of,
    rate_key,
    task_consumer,
    tenant_names,
)

__all__ = ["TenantUsage", "tenant_report"]

_CAS_TRIES: Final = 50


def _decode(raw: bytes | None) -> Window:
    if not raw:
        return Window()
    try:
        data = json.loads(raw)
        return Window(index=int(data["index"]), used=int(data["used"]))
    except (ValueError, KeyError, TypeError):
        return Window()  # unreadable: counted afresh (never blocks a tenant for good)


class TenantUsage:
    def __init__(self, bus: Bus, *, clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.clock = clock

    async def read(self, key: str, *, window_s: float) -> tuple[Window, int]:
        """The counter as of now (zero once its window turned) and its revision (0: none)."""
        kv = await self.bus.kv(subjects.TENANTS_BUCKET)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return Window().current(self.clock(), window_s), 0
        return _decode(entry.value).current(self.clock(), window_s), int(entry.revision or 0)

    async def update(
        self, key: str, *, window_s: float, change: Callable[[Window], Window | None]
    ) -> Window:
        """Apply `change` to the current counter by compare-and-set (retried when another
        writer came first); `change` returns None to leave it as it is. Returns the
        counter as written (or as found)."""
        for _ in range(_CAS_TRIES):
            current, revision = await self.read(key, window_s=window_s)
            new = change(current)
            if new is None:
                return current
            data = json.dumps(new.to_json()).encode()
            try:
                await self.bus.kv_update(subjects.TENANTS_BUCKET, key, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except (nats.errors.Error, TimeoutError) as e:
                raise BusError(f"tenant counter {key}: {e or type(e).__name__}") from e
            return new
        raise BusError(f"tenant counter {key}: {_CAS_TRIES} writers in a row came first")


async def tenant_report(
    bus: Bus, cfg: TenantsSettings, *, skills: Sequence[str] = (subjects.SUMMARIZE_SKILL,)
) -> list[dict[str, Any]]:
    """Per tenant (`default` first): its limits, its use this minute and this budget
    window (the shared counters), and its tasks queued and in flight over its consumers
    (`agentbus tenants`)."""
    usage = TenantUsage(bus)
    out: list[dict[str, Any]] = []
    for tenant in tenant_names(cfg):
        limits = limits_of(tenant, cfg)
        jobs, _ = await usage.read(rate_key(tenant), window_s=RATE_WINDOW_S)
        tokens, _ = await usage.read(budget_key(tenant), window_s=limits.budget_window_s)
        queued = in_flight = 0
        for skill in skills:
            for priority in PRIORITIES:
                try:
                    info = await bus.js.consumer_info(
                        subjects.TASKS_STREAM, task_consumer(skill, priority, tenant)
                    )
                except nats.js.errors.NotFoundError:
                    continue  # not provisioned (yet)
                queued += int(info.num_pending or 0)
                in_flight += int(info.num_ack_pending or 0)
        out.append(
            {
                "tenant": tenant,
                "weight": limits.weight,
                "max_in_flight": limits.max_in_flight,
                "in_flight": in_flight,
                "queued": queued,
                "jobs_this_minute": jobs.used,
                "jobs_per_minute": limits.jobs_per_minute,
                "over_rate": limits.over_rate,
                "tokens_this_window": tokens.used,
                "token_budget": limits.token_budget,
                "budget_window_s": limits.budget_window_s,
                "over_budget": limits.over_budget,
                "window_turns_in_s": round(
                    Window.seconds_left(time.time(), limits.budget_window_s), 1
                ),
            }
        )
    return out
