"""The pulls of one priority split among tenants by weight: `TenantPullers` stands where
the priority loop (`agentbus.bus.priority_pull`) has one `Puller` per priority, and has
one `Puller` per tenant's consumer of that priority behind the same `pull` call.

A pull for `want` slots asks `agentbus.contract.tenants.plan_shares` how to split them
(lowest pass first, by weight), pulls each tenant's share at once (`no_wait` without
`expires`) and offers what a tenant did not fill to the next ones. A tenant found empty
rests `EMPTY_REST_S` (a backlog of one tenant costs the empty ones at most one request
each per rest). A long poll (the loop waits for work) first pulls at once as above; if
nothing came, it long-polls every tenant side by side, each for at least one message
(more by weight when there are more slots than tenants), so that any tenant's first
task wakes an idle replica; once one answers with work the others are left (`Puller.
cancel`). At most `want` messages are started: one beyond them (two tenants answered at
once, with fewer slots than tenants) is held by its tenant's puller, and so is one that
comes for a request left (`agentbus.bus.pull`); held messages are taken first by the
next pull, and holding one ends the long poll at once.

With `slots` (`agentbus.bus.tenant_slots`), a capped tenant is asked for no more tasks
than the run permits it got just before (none: it is at its cap, and not asked); with
`budgets`, a tenant whose token budget is spent (`over_budget` "wait") is not asked until
its window turns (its tasks stay queued: no redelivery). ("fail": its tasks are pulled,
and the worker fails their jobs with the reason.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agentbus.bus.consume import ConsumerLoop, Handler
from agentbus.bus.core import Bus
from agentbus.bus.pull import Puller, PullSource
from agentbus.bus.tenant_slots import TenantBudgets, TenantSlots
from agentbus.contract.errors import PullError
from agentbus.contract.tenants import plan_shares, record_empty, record_starts

__all__ = [
    "EMPTY_REST_S",
    "MISSING_REST_S",
    "PARTIAL_REST_S",
    "TenantConsumerLoop",
    "TenantPullers",
]

EMPTY_REST_S: Final = 0.02
"""A tenant found empty is not asked again for this long while others have work."""
PARTIAL_REST_S: Final = 0.1
"""Longest wait of a long poll that finds no tenant to ask (each at its cap or waiting for
its budget)."""
MISSING_REST_S: Final = 10.0
"""A tenant whose consumer fails (not provisioned) is asked again after this long."""

log = logging.getLogger("agentbus.bus")


class TenantPullers:
    """The consumers of one priority, one per tenant (`durables`: tenant -> durable)."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        stream: str,
        durables: Mapping[str, str],
        weights: Mapping[str, int],
        slots: TenantSlots | None = None,
        budgets: TenantBudgets | None = None,
    ) -> None:
        self.pullers = {t: Puller(nc, stream=stream, durable=d) for t, d in durables.items()}
        self.slots = slots
        self.budgets = budgets
        self.weights = {t: weights.get(t, 1) for t in durables}
        self.passes: dict[str, float] = dict.fromkeys(durables, 0.0)
        self.pulled: dict[str, int] = dict.fromkeys(durables, 0)
        """Tasks pulled per tenant (also `agentbus_tenant_tasks_pulled_total`)."""
        self.on_pulled: Callable[[str, int], None] | None = None
        self._rest_until: dict[str, float] = dict.fromkeys(durables, 0.0)
        self._answered = asyncio.Event()
        self._handing_back: set[asyncio.Task[None]] = set()
        for puller in self.pullers.values():
            puller.on_held = self._answered.set  # a held message ends a long poll
        self.durable = "/".join(durables.values())
        self.first = next(iter(durables))

    async def start(self) -> None:
        for puller in self.pullers.values():
            await puller.start()

    async def close(self) -> None:
        for puller in self.pullers.values():
            await puller.close()

    async def cancel(self) -> None:
        for puller in self.pullers.values():
            await puller.cancel()

    @property
    def open(self) -> bool:
        return any(p.open for p in self.pullers.values())

    def _took(self, tenant: str, count: int) -> None:
        if count:
            self.passes = record_starts(self.passes, tenant, count, weights=self.weights)
            self.pulled[tenant] += count
            if self.on_pulled is not None:
                self.on_pulled(tenant, count)
        else:
            self.passes = record_empty(self.passes, tenant, weights=self.weights)
            self._rest_until[tenant] = time.monotonic() + EMPTY_REST_S

    def _unavailable(self, tenant: str, error: PullError) -> None:
        """The first tenant's consumer failing is the loop's failure (it rebinds); another
        tenant's (not provisioned: settings that differ between the provisioner and this
        worker) rests `MISSING_REST_S`, so the other tenants' work goes on."""
        if tenant == self.first:
            raise error
        self._rest_until[tenant] = time.monotonic() + MISSING_REST_S
        log.warning("tenant %s's tasks not pulled for %gs: %s", tenant, MISSING_REST_S, error)

    async def pull(self, batch: int, *, expires_s: float, deliver: Callable[[Msg], None]) -> int:
        """Up to `batch` messages over the tenants' consumers, as `Puller.pull`."""
        held = await self._over_budget()
        got = await self._take_held(batch, deliver, waiting=held)
        if got:
            return got
        got = await self._pull_now(batch, deliver, rested=expires_s > 0, held=held)
        if got or expires_s <= 0:
            return got
        return await self._long_poll(batch, expires_s=expires_s, deliver=deliver, held=held)

    async def _take_held(
        self, want: int, deliver: Callable[[Msg], None], *, waiting: frozenset[str]
    ) -> int:
        """Messages the tenants' pullers hold (left requests, a long poll's extra), up to
        `want`, before anything is asked of the server (a capped tenant's with permits)."""
        started = 0
        for tenant, puller in self.pullers.items():
            share = min(puller.held, want - started)
            if share <= 0 or tenant in waiting:
                continue
            try:
                got = await self._one(tenant, share, expires_s=0, deliver=deliver)
            except PullError as e:
                self._unavailable(tenant, e)
                continue
            if got:
                self._took(tenant, got)
                started += got
        return started

    async def _over_budget(self) -> frozenset[str]:
        """The tenants whose tasks wait for their budget window to turn (each counts as
        empty: it banks no credit meanwhile)."""
        budgets = self.budgets
        if budgets is None:
            return frozenset()
        held: set[str] = set()
        for tenant in self.pullers:
            if budgets.budgeted(tenant) and (await budgets.verdict(tenant)).hold_s > 0:
                held.add(tenant)
                self.passes = record_empty(self.passes, tenant, weights=self.weights)
        return frozenset(held)

    async def _permits(self, tenant: str, share: int) -> list[Msg] | None:
        """Run permits for up to `share` of capped `tenant`'s tasks (None: not capped)."""
        if self.slots is None or not self.slots.capped(tenant):
            return None
        return await self.slots.take(tenant, share)

    async def _pull_on(
        self,
        tenant: str,
        share: int,
        permits: list[Msg] | None,
        *,
        expires_s: float,
        deliver: Callable[[Msg], None],
    ) -> int:
        """Pull up to `share` of `tenant`'s tasks, each bound to one of `permits` (when
        capped: then as many as there are permits); the permits left go back."""
        slots = self.slots
        if permits is None or slots is None:
            return await self.pullers[tenant].pull(share, expires_s=expires_s, deliver=deliver)
        spare = list(permits)

        def bound(msg: Msg) -> None:
            slots.bind(msg, spare.pop())
            deliver(msg)

        try:
            return await self.pullers[tenant].pull(len(spare), expires_s=expires_s, deliver=bound)
        finally:
            await slots.hand_back(spare)

    async def _one(
        self, tenant: str, share: int, *, expires_s: float, deliver: Callable[[Msg], None]
    ) -> int | None:
        """`_pull_on` with the permits taken first (None: at its cap, not asked)."""
        permits = await self._permits(tenant, share)
        if permits is not None and not permits:
            return None
        return await self._pull_on(tenant, share, permits, expires_s=expires_s, deliver=deliver)

    async def _pull_now(
        self,
        want: int,
        deliver: Callable[[Msg], None],
        *,
        rested: bool,
        held: frozenset[str] = frozenset(),
    ) -> int:
        now = time.monotonic()
        resting = frozenset(t for t, until in self._rest_until.items() if until > now)
        if rested:  # about to wait anyway: ask everyone first
            resting = frozenset()
        resting |= held
        started = 0
        drained: set[str] = set()
        while started < want:
            plan = plan_shares(
                free=want - started,
                passes=self.passes,
                weights=self.weights,
                exclude=resting | drained,
            )
            if not plan:
                break
            for tenant, share in plan:
                try:
                    got = await self._one(tenant, share, expires_s=0, deliver=deliver)
                except PullError as e:
                    self._unavailable(tenant, e)
                    drained.add(tenant)
                    continue
                if got is None:  # at its cap: the others get its slots
                    drained.add(tenant)
                    continue
                self._took(tenant, got)
                started += got
                if got < share:
                    drained.add(tenant)  # its unfilled slots go to the others next round
        return started

    async def _long_poll(
        self,
        want: int,
        *,
        expires_s: float,
        deliver: Callable[[Msg], None],
        held: frozenset[str] = frozenset(),
    ) -> int:
        # every tenant one slot while there are enough (by weight beyond that); else the
        # lowest passes by plan, and every other uncapped tenant one slot beyond `want`
        # (its message held if it comes with the others: a tenant left out of the wait
        # would wait for its end); a tenant at its cap (no permit) is left out and the
        # slots planned again
        excluded = set(held)
        granted: dict[str, tuple[int, list[Msg] | None]] = {}
        while not granted:
            asked = [t for t in self.pullers if t not in excluded]
            if not asked:  # each at its cap or waiting for its budget: asked again soon
                await asyncio.sleep(min(expires_s, PARTIAL_REST_S))
                return 0
            out = frozenset(excluded)
            shares = dict.fromkeys(asked if want >= len(asked) else [], 1)
            for tenant, n in plan_shares(free=want - len(shares), passes=self.passes,
                                         weights=self.weights, exclude=out):  # fmt: skip
                shares[tenant] = shares.get(tenant, 0) + n
            for tenant in asked:
                if tenant not in shares and not (self.slots and self.slots.capped(tenant)):
                    shares[tenant] = 1
            for tenant, share in shares.items():
                try:
                    permits = await self._permits(tenant, share)
                except PullError as e:
                    self._unavailable(tenant, e)
                    excluded.add(tenant)
                    continue
                if permits is not None and not permits:
                    excluded.add(tenant)
                    continue
                granted[tenant] = (share if permits is None else len(permits), permits)
        answered = self._answered
        answered.clear()
        started = dict.fromkeys(granted, 0)

        async def one(tenant: str, share: int, permits: list[Msg] | None) -> None:
            def deliver_first(msg: Msg) -> None:
                if sum(started.values()) >= want:  # more came than there are slots
                    self._unbind(msg)
                    self.pullers[tenant].hold(msg)
                    return
                started[tenant] += 1
                deliver(msg)
                answered.set()

            try:
                await self._pull_on(
                    tenant, share, permits, expires_s=expires_s, deliver=deliver_first
                )
            finally:
                answered.set()

        polls = {t: asyncio.ensure_future(one(t, n, p)) for t, (n, p) in granted.items()}
        await answered.wait()
        await asyncio.sleep(0)  # each poll's request is open (or it took held ones) first
        for tenant, poll in polls.items():
            if not poll.done():
                await self.pullers[tenant].cancel()
        results = await asyncio.gather(*polls.values(), return_exceptions=True)
        for tenant, got in zip(polls, results, strict=True):
            if isinstance(got, PullError):
                self._unavailable(tenant, got)
                continue
            if isinstance(got, BaseException):
                raise got
            if started[tenant]:
                self._took(tenant, started[tenant])
        return sum(started.values())

    def _unbind(self, msg: Msg) -> None:
        """A task held, not started: its run permit (if any) goes back; the pull that
        starts it takes one again."""
        permit = self.slots.unbind(msg) if self.slots is not None else None
        if permit is None or self.slots is None:
            return
        task = asyncio.get_running_loop().create_task(self.slots.hand_back([permit]))
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)


class TenantConsumerLoop(ConsumerLoop):
    """`ConsumerLoop` over one durable per tenant (`durables`: tenant -> durable, the
    default tenant's first), its pulls shared among the tenants by weight: the
    orchestrator's job intake, so that one tenant's backlog of jobs does not hold up
    another's intake."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durables: Mapping[str, str],
        weights: Mapping[str, int],
        handler: Handler,
        concurrency: int,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(
            bus,
            stream=stream,
            durable=next(iter(durables.values())),
            handler=handler,
            concurrency=concurrency,
            fetch_timeout_s=fetch_timeout_s,
        )
        self.durables = dict(durables)
        self.weights = dict(weights)
        self.group: TenantPullers | None = None

    async def _bind(self) -> PullSource:
        if self._puller is not None:
            await self._puller.close()
            self._puller = None
        group = TenantPullers(
            self.bus.nc, stream=self.stream, durables=self.durables, weights=self.weights
        )
        await group.start()
        self._puller = self.group = group
        return group
