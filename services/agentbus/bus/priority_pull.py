"""A consumer loop over one durable consumer per priority (high, normal, low).

Each round asks `agentbus.contract.priority.plan_pulls` which priorities to pull, in which
order and for how many slots (high first; a lower priority that waited its patience goes
first for its owed slots), never asking for more than the free slots. Priorities before
normal in the plan are pulled with immediate requests (`no_wait` without `expires`: the
server answers at once, `404` when empty); normal, the usual work, with the long-poll of
`ConsumerLoop` (it answers at once when normal has work, else waits), so a stream of
normal tasks costs one request per pull, as before priorities. A priority found empty
rests `EMPTY_REST_S` (low `LOW_EMPTY_REST_S`) before it is asked again, and low is
asked only when it is due or normal is empty: a backlog of one priority costs no extra
round trip per task.

While the replica is idle (its last wait on normal ended empty), a one-slot *watch*
long-polls high beside it (that slot is held
for high: never more messages than free slots); high's first task cuts the normal wait
short (its request is cancelled: its reply subject is unsubscribed, and the server drops
a pull request nobody listens for) and the next round pulls the rest of high at once;
when normal work comes instead, the watch is cancelled and its slot goes back to the
pulls. An idle replica asks low again at least every `LOW_CHECK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Final

import nats.errors
from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop, Handler
from agentbus.bus.core import Bus
from agentbus.bus.pull import Puller
from agentbus.bus.tenant_pull import TenantPullers
from agentbus.bus.tenant_slots import TenantBudgets, TenantSlots
from agentbus.contract.errors import AgentBusError
from agentbus.contract.priority import (
    DEFAULT_PATIENCE,
    PRIORITIES,
    Priority,
    plan_pulls,
    record_empty,
    record_starts,
)
from agentbus.observability import metrics

__all__ = [
    "EMPTY_REST_S",
    "LOW_CHECK_S",
    "LOW_EMPTY_REST_S",
    "PARTIAL_WAIT_S",
    "PriorityConsumerLoop",
]

log = logging.getLogger("agentbus.bus")

EMPTY_REST_S: Final = 0.02
"""A priority found empty is not asked again for this long (while others have work): a
high-priority task waits at most this much longer to be noticed during a backlog."""
LOW_EMPTY_REST_S: Final = 0.1
"""The same for low (asked when due: a busy replica checks an empty low queue at most
ten times a second)."""

PARTIAL_WAIT_S: Final = 0.1
"""Longest wait on normal alone (no slot to spare for the high-priority watch)."""
LOW_CHECK_S: Final = 0.25
"""Longest wait on normal (and high) before low is asked again, on an idle replica."""


class PriorityConsumerLoop(ConsumerLoop):
    """`ConsumerLoop` over `durables` (one per priority); `durable` (readiness, metrics)
    is the normal one."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durables: Mapping[Priority, str],
        handler: Handler,
        concurrency: int,
        fetch_timeout_s: float = 1.0,
        patience: Mapping[Priority, int] = DEFAULT_PATIENCE,
        tenants: Mapping[Priority, Mapping[str, str]] | None = None,
        weights: Mapping[str, int] | None = None,
        slots: Mapping[str, str] | None = None,
        keepalive_s: float = 10.0,
        budgets: TenantBudgets | None = None,
    ) -> None:
        """`tenants`: per priority, tenant -> its durable (the default tenant's is the
        one of `durables`); each priority's pulls are then shared among the tenants by
        `weights` (`agentbus.bus.tenant_pull`). `slots`: capped tenant -> its run
        permits' durable (kept alive every `keepalive_s` while a task runs on one), one
        pool for every priority; `budgets`: tenants whose budget is spent are not pulled
        (`agentbus.bus.tenant_slots`)."""
        super().__init__(
            bus,
            stream=stream,
            durable=durables[Priority.NORMAL],
            handler=handler,
            concurrency=concurrency,
            fetch_timeout_s=fetch_timeout_s,
        )
        self.durables = dict(durables)
        self.patience = dict(patience)
        self.skipped: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        self.pulled: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        """Tasks pulled per priority (also `agentbus_tasks_pulled_total`)."""
        self.tenants = {p: dict(t) for p, t in (tenants or {}).items() if len(t) > 1}
        self.weights = dict(weights or {})
        self.slot_durables = dict(slots or {}) if self.tenants else {}
        self.keepalive_s = keepalive_s
        self.budgets = budgets
        self.slots: TenantSlots | None = None
        self._pullers: dict[Priority, Puller | TenantPullers] = {}
        self._tenant_counters = {
            t: metrics.TENANT_TASKS_PULLED.labels(bus.service, t)
            for by_tenant in self.tenants.values()
            for t in by_tenant
        }
        self._rest_until: dict[Priority, float] = dict.fromkeys(PRIORITIES, 0.0)
        self._counters = {p: metrics.TASKS_PULLED.labels(bus.service, p.value) for p in PRIORITIES}
        self._cancels: set[asyncio.Future[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._normal_idle = True
        self._cut_short = False

    async def _bind(self) -> Puller:
        await self._close_pullers()
        if self.slot_durables and self.slots is None:  # (a rebind keeps those held)
            self.slots = TenantSlots(
                self.bus.nc,
                stream=self.stream,
                durables=self.slot_durables,
                keepalive_s=self.keepalive_s,
            )
            await self.slots.start()
        for p in PRIORITIES:
            by_tenant = self.tenants.get(p)
            if by_tenant:
                group = TenantPullers(
                    self.bus.nc,
                    stream=self.stream,
                    durables=by_tenant,
                    weights=self.weights,
                    slots=self.slots,
                    budgets=self.budgets,
                )
                group.on_pulled = self._tenant_pulled
                await group.start()
                self._pullers[p] = group
            else:
                puller = Puller(self.bus.nc, stream=self.stream, durable=self.durables[p])
                await puller.start()
                self._pullers[p] = puller
        normal = self._pullers[Priority.NORMAL]
        self._puller = normal if isinstance(normal, Puller) else next(iter(normal.pullers.values()))
        return self._puller

    def _tenant_pulled(self, tenant: str, count: int) -> None:
        counter = self._tenant_counters.get(tenant)
        if counter is not None:
            counter.inc(count)

    async def _close_pullers(self) -> None:
        pullers, self._pullers = list(self._pullers.values()), {}
        self._puller = None
        for puller in pullers:
            await puller.close()

    async def close(self) -> None:
        await self._close_pullers()
        # permits still held (a task outlived the grace period) go back by ack_wait
        slots, self.slots = self.slots, None
        if slots is not None:
            await slots.close()

    async def _finished(self, msg: Msg) -> None:
        """A task's handler returned: its run permit (if any) goes back."""
        if self.slots is not None:
            await self.slots.release(msg)

    def _took(self, priority: Priority, count: int) -> None:
        if count:
            self.skipped = record_starts(self.skipped, priority, count, patience=self.patience)
            self.pulled[priority] += count
            self._counters[priority].inc(count)
        else:
            self.skipped = record_empty(self.skipped, priority)
            rest_s = LOW_EMPTY_REST_S if priority is Priority.LOW else EMPTY_REST_S
            self._rest_until[priority] = time.monotonic() + rest_s

    def _cancel(self, priority: Priority) -> None:
        """End the open request of `priority` (soon, without waiting here)."""
        puller = self._pullers.get(priority)
        if puller is None:
            return
        cancel = asyncio.ensure_future(puller.cancel())
        self._cancels.add(cancel)
        cancel.add_done_callback(self._cancels.discard)

    def pause(self) -> None:
        """Also ends the high-priority watch: nothing reaches a paused replica."""
        super().pause()
        if self.reserved:
            self._cancel(Priority.HIGH)

    async def wait_paused(self, *, timeout_s: float) -> bool:
        watch = self._watch
        if watch is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(watch), timeout_s)
        return await super().wait_paused(timeout_s=timeout_s) and not self.reserved

    @property
    def reserved(self) -> int:
        """Slots held for the high-priority watch (its request is open)."""
        return 1 if self._watch is not None and not self._watch.done() else 0

    async def _round(self, free: int) -> None:
        """Immediate pulls by plan up to normal, which is long-polled: it answers at once
        when normal has work, else waits (`_pull_normal`)."""
        now = time.monotonic()
        exclude = {p for p in PRIORITIES if self._rest_until[p] > now}
        if self.reserved:
            exclude.add(Priority.HIGH)  # its watch is waiting for it already
        started = 0
        plan = plan_pulls(
            free=free, skipped=self.skipped, patience=self.patience, exclude=frozenset(exclude)
        )
        drained: set[Priority] = set()
        for priority, owed in plan:
            want = min(owed, free - started)
            if want <= 0:
                return
            if priority in drained:
                continue
            if priority is Priority.NORMAL:
                await self._pull_normal(want)
                return
            got = await self._pullers[priority].pull(want, expires_s=0, deliver=self._spawn)
            self._took(priority, got)
            started += got
            if got < want:
                drained.add(priority)
            if self._stopping.is_set() or self.paused:
                return
        if not started:  # nothing anywhere: wait on normal (and high, through its watch)
            await self._pull_normal(free)

    async def _pull_normal(self, want: int) -> None:
        """Long-poll normal. Once a wait on normal ended empty (the replica is idle), a
        one-slot watch waits on high beside it, and high's first task cuts this wait
        short; low is asked again when the wait ends, within `LOW_CHECK_S`."""
        if self._normal_idle and want >= 2 and not self.reserved and not self.paused:
            self._watch = asyncio.create_task(self._watch_high())
            want -= 1
        expires_s = min(self.fetch_timeout_s, LOW_CHECK_S if self.reserved else PARTIAL_WAIT_S)
        self._cut_short = False
        got = await self._pullers[Priority.NORMAL].pull(
            want, expires_s=expires_s, deliver=self._spawn
        )
        if got or not self._cut_short:
            self._took(Priority.NORMAL, got)
        self._normal_idle = not got and not self._cut_short
        if got and self.reserved:
            # work again: the watch's slot goes back to the pulls (high is asked between
            # them from now on)
            self._cancel(Priority.HIGH)

    async def _watch_high(self) -> None:
        def deliver(msg: Msg) -> None:
            self._spawn(msg)
            self._cut_short = True
            self._cancel(Priority.NORMAL)

        try:
            # renewed while the replica stays idle; ends with high's first task (the loop
            # pulls the rest at once) or once normal has work (high is then asked between
            # normal pulls)
            got = 0
            while not got and self._normal_idle and not self.paused:
                if self._stopping.is_set():
                    break
                got = await self._pullers[Priority.HIGH].pull(
                    1, expires_s=self.fetch_timeout_s, deliver=deliver
                )
            if got:
                self._took(Priority.HIGH, got)
        except (AgentBusError, nats.errors.Error, OSError, TimeoutError) as e:
            log.info("watch on %s ended: %s", self.durables[Priority.HIGH], e)
        finally:
            self._freed.set()

    async def _guarded(self, free: int) -> None:
        try:
            if not self._pullers or not self.bound:
                await self._bind()
            if not self.bus.nc.is_connected:
                await self._pause_unless_stopping(0.1)
                return
            if self.paused or self._stopping.is_set():
                return
            self._idle.clear()
            try:
                await self._round(free)
            finally:
                self._idle.set()
        except (AgentBusError, nats.errors.Error, OSError, TimeoutError) as e:
            await self._unavailable(e, what=f"consumers {'/'.join(self.durables.values())}")
            return
        self.bound = True
        self._failures = 0

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            free = self.concurrency - len(self._inflight) - self.reserved
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            await self._guarded(free)
        watch = self._watch
        if watch is not None and not watch.done() and Priority.HIGH in self._pullers:
            await self._pullers[Priority.HIGH].cancel()
        for pending in [*self._cancels, *([watch] if watch is not None else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        self.bound = False
