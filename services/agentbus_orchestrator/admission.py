"""Tenant limits at job intake: the job rate and the token budget, counted in the shared
`tenant-usage` KV bucket (`agentbus.bus.tenant_usage`), so they hold with any number of
orchestrator replicas; and the token meter that counts the tokens of finished tasks.

A job over its tenant's limit is refused (its state `failed` with one line: `tenant a is
over its rate of 60 jobs per minute: retry after 12 s`) or held, as the tenant's
`over_rate` / `over_budget` setting says. A held job is published again on its own
subject with `Agentbus-Not-Before` (the time its window turns) and its message acked: it
waits in the JOBS stream, costing one delivery per hold rather than a redelivery per
check, so its delivery count stays far from `max_deliver` however long it waits.

Token budgets are checked when a job is taken in, and again by workers before each task
starts (`agentbus.bus.tenant_slots.TenantBudgets`); tokens are counted as results come
in, batched per tenant for `FLUSH_S` (one compare-and-set per tenant per flush: a crash
loses at most that much counting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from nats.aio.msg import Msg

from agentbus.bus.core import Bus
from agentbus.bus.tenant_usage import TenantUsage
from agentbus.contract import subjects
from agentbus.contract.headers import NOT_BEFORE_HEADER
from agentbus.contract.settings import TenantsSettings
from agentbus.contract.tenants import (
    RATE_WINDOW_S,
    Verdict,
    Window,
    admission,
    budget_key,
    budget_verdict,
    limits_of,
    rate_key,
    rate_verdict,
    tenant_names,
)
from agentbus.observability import metrics

__all__ = ["FLUSH_S", "Admission", "not_before_s"]

log = logging.getLogger("agentbus.orchestrator")

FLUSH_S: Final = 0.5
"""Tokens of finished tasks are written to the shared counter at most this often."""


def not_before_s(msg: Msg) -> float:
    """The Unix time a held job may be taken in (0: not held)."""
    try:
        return float((msg.headers or {}).get(NOT_BEFORE_HEADER, 0))
    except ValueError:
        return 0.0


class Admission:
    def __init__(
        self,
        bus: Bus,
        cfg: TenantsSettings,
        *,
        service: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.cfg = cfg
        self.service = service
        self.clock = clock
        self.usage = TenantUsage(bus, clock=clock)
        self._tokens: dict[str, int] = {}
        self._flushed_at = time.monotonic()
        self._flush_lock = asyncio.Lock()
        for tenant in tenant_names(cfg):
            budget = limits_of(tenant, cfg).token_budget
            if budget is not None:
                metrics.TENANT_TOKEN_BUDGET.labels(service, tenant).set(budget)

    def limited(self, tenant: str) -> bool:
        limits = limits_of(tenant, self.cfg)
        return limits.jobs_per_minute is not None or limits.token_budget is not None

    async def verdict(self, tenant: str) -> Verdict:
        """Budget first (read only), then the rate (counts the job when it is let in)."""
        limits = limits_of(tenant, self.cfg)
        if limits.token_budget is not None:
            spent, _ = await self.usage.read(budget_key(tenant), window_s=limits.budget_window_s)
            over_budget = budget_verdict(spent, now_s=self.clock(), limits=limits)
            if over_budget is not None:
                return self._counted(
                    tenant,
                    admission(tenant, limits=limits, over_budget_s=over_budget, over_rate_s=None),
                )
        over_rate: float | None = None
        if limits.jobs_per_minute is not None:

            def take(counter: Window) -> Window | None:
                nonlocal over_rate
                now = self.clock()
                over_rate = rate_verdict(counter, now_s=now, limit=limits.jobs_per_minute)
                if over_rate is not None:
                    return None
                return counter.add(1, now_s=now, window_s=RATE_WINDOW_S)

            await self.usage.update(rate_key(tenant), window_s=RATE_WINDOW_S, change=take)
        return self._counted(
            tenant, admission(tenant, limits=limits, over_budget_s=None, over_rate_s=over_rate)
        )

    def _counted(self, tenant: str, verdict: Verdict) -> Verdict:
        metrics.TENANT_JOBS.labels(self.service, tenant, verdict.outcome).inc()
        return verdict

    async def hold(self, msg: Msg, *, job_id: str, hold_s: float) -> None:
        """Publish the job again, not to be taken in before `hold_s` from now, then ack
        this message (the same subject keeps its tenant; a retry of this publish is
        deduplicated by its id)."""
        until = self.clock() + hold_s
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        headers[NOT_BEFORE_HEADER] = f"{until:.3f}"
        await self.bus.publish_raw(
            msg.subject,
            msg.data,
            msg_id=f"{job_id}:held:{int(until)}",
            stream=subjects.JOBS_STREAM,
            headers=headers,
        )
        await msg.ack()

    # --- the token meter -----------------------------------------------------------

    async def count_tokens(self, tenant: str, tokens: int) -> None:
        """Count a finished task's tokens against its tenant (written every `FLUSH_S`)."""
        if tokens <= 0:
            return
        metrics.TENANT_TOKENS.labels(self.service, tenant).inc(tokens)
        self._tokens[tenant] = self._tokens.get(tenant, 0) + tokens
        if time.monotonic() - self._flushed_at >= FLUSH_S and not self._flush_lock.locked():
            await self.flush()

    async def flush(self) -> None:
        async with self._flush_lock:
            self._flushed_at = time.monotonic()
            pending, self._tokens = self._tokens, {}
            for tenant, tokens in pending.items():
                window_s = limits_of(tenant, self.cfg).budget_window_s

                def add(counter: Window, n: int = tokens, w: float = window_s) -> Window:
                    return counter.add(n, now_s=self.clock(), window_s=w)

                try:
                    spent = await self.usage.update(budget_key(tenant), window_s=window_s,
                                                    change=add)  # fmt: skip
                except Exception as e:
                    # counted again with the next flush
                    self._tokens[tenant] = self._tokens.get(tenant, 0) + tokens
                    log.warning("token count of tenant %s not written yet: %s", tenant, e)
                    continue
                metrics.TENANT_TOKENS_WINDOW.labels(self.service, tenant).set(spent.used)
