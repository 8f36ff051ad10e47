"""What a worker checks before it starts a tenant's task: a run permit of a capped tenant
(`TenantSlots`), and the tenant's token budget (`TenantBudgets`).

Permits (`agentbus.contract.tenants`, Caps): a capped tenant has exactly `max_in_flight`
messages on `tasks.{skill}.slots.{tenant}.{cap}`. Before a pull of the tenant's tasks (of any
priority) the worker pulls as many permits as it asks tasks for, at once (`no_wait`: none
left answers `404` at once), asks for no more tasks than it got permits, binds one permit
to each task that came and hands the others back (`nak`: another replica may take them
at once). A bound permit is kept alive with `in_progress` while its task runs and handed
back when the task's handler returns. The server gives each permit to one worker at a
time: that is the cap, over every priority and every replica.

Budgets: the tenant's token counter in the `tenant-usage` KV bucket, read at most every
`BUDGET_CACHE_S` per tenant, judged by `agentbus.contract.tenants.start_verdict`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agentbus.bus.core import Bus
from agentbus.bus.pull import Puller
from agentbus.bus.tenant_usage import TenantUsage
from agentbus.contract.settings import TenantsSettings
from agentbus.contract.tenants import (
    DEFAULT_TENANT,
    Verdict,
    Window,
    budget_key,
    limits_of,
    start_verdict,
)

__all__ = ["BUDGET_CACHE_S", "TenantBudgets", "TenantSlots"]

log = logging.getLogger("agentbus.bus")

BUDGET_CACHE_S: Final = 0.25
"""A tenant's token counter is read again at most this often by one replica (a task
that finishes spends tokens that the orchestrator writes within its flush interval)."""


class TenantSlots:
    """The run permits of the capped tenants (`durables`: tenant -> its permits' consumer)
    of one replica's consumer loop, shared by its pulls of every priority."""

    def __init__(
        self, nc: NatsClient, *, stream: str, durables: Mapping[str, str], keepalive_s: float
    ) -> None:
        self.pullers = {t: Puller(nc, stream=stream, durable=d) for t, d in durables.items()}
        self.keepalive_s = keepalive_s
        self._locks = {t: asyncio.Lock() for t in durables}
        self._bound: dict[int, Msg] = {}
        """Task message (by id: a nats-py Msg is not hashable) -> the permit it runs on."""
        self._keepalive: asyncio.Task[None] | None = None

    def capped(self, tenant: str) -> bool:
        return tenant in self.pullers

    @property
    def held(self) -> int:
        return len(self._bound)

    async def start(self) -> None:
        for puller in self.pullers.values():
            await puller.start()
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        for puller in self.pullers.values():
            await puller.close()

    async def take(self, tenant: str, want: int) -> list[Msg]:
        """Up to `want` permits of capped `tenant`, at once ([] when all are out)."""
        permits: list[Msg] = []
        if want <= 0:
            return permits
        async with self._locks[tenant]:  # one request at a time per puller
            await self.pullers[tenant].pull(want, expires_s=0, deliver=permits.append)
        return permits

    def bind(self, task: Msg, permit: Msg) -> None:
        self._bound[id(task)] = permit

    def unbind(self, task: Msg) -> Msg | None:
        """The permit `task` was bound to, no longer bound (the task did not start)."""
        return self._bound.pop(id(task), None)

    async def release(self, task: Msg) -> None:
        """The handler of `task` returned: its permit goes back (no-op without one)."""
        permit = self.unbind(task)
        if permit is not None:
            await self.hand_back([permit])

    async def hand_back(self, permits: list[Msg]) -> None:
        for permit in permits:
            try:
                await permit.nak()
            except Exception as e:  # its ack_wait hands it back then
                log.warning("permit %s not handed back: %s", permit.subject, e)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            for permit in list(self._bound.values()):
                with contextlib.suppress(Exception):
                    await permit.in_progress()


class TenantBudgets:
    """The tenants' token budgets as of a short while ago (one KV read per tenant per
    `BUDGET_CACHE_S`): a spent one holds the tenant's tasks, or fails them."""

    def __init__(
        self,
        bus: Bus,
        cfg: TenantsSettings,
        *,
        clock: Callable[[], float] = time.time,
        cache_s: float = BUDGET_CACHE_S,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.cache_s = cache_s
        self.usage = TenantUsage(bus, clock=clock)
        self._counters: dict[str, tuple[Window, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def budgeted(self, tenant: str) -> bool:
        return limits_of(tenant, self.cfg).token_budget is not None

    async def verdict(self, tenant: str) -> Verdict:
        """Start a task of `tenant` now, hold it, or fail it (`start_verdict`). A counter
        that cannot be read counts as the last one read (none: budget left)."""
        limits = limits_of(tenant, self.cfg)
        if limits.token_budget is None:
            return Verdict()
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            counter, read_at = self._counters.get(tenant, (Window(), -self.cache_s))
            if time.monotonic() - read_at >= self.cache_s:
                try:
                    counter, _ = await self.usage.read(
                        budget_key(tenant), window_s=limits.budget_window_s
                    )
                except Exception as e:  # never stops the pulls
                    log.warning("token counter of tenant %s not read: %s", tenant, e)
                self._counters[tenant] = (counter, time.monotonic())
        return start_verdict(tenant, counter, now_s=self.clock(), limits=limits)

    async def refusal(self, tenant: str | None) -> str | None:
        """Why a task of `tenant` (None: the default tenant) must not run: its budget is
        spent and its setting is `over_budget` "fail" (its job fails with this line).
        With "wait" the tenant is not pulled meanwhile (`TenantPullers`); a task pulled
        before the spent budget was seen runs, rather than spend a delivery going back."""
        name = tenant or DEFAULT_TENANT
        if not self.budgeted(name):
            return None
        return (await self.verdict(name)).refused
