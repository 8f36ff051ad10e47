"""The pulls of one priority split among tenants by weight: `TenantPullers` stands where
the priority loop (`agentbus.bus.priority_pull`) has one `Puller` per priority, and has
one `Puller` per tenant's consumer of that priority behind the same `pull` call.

A pull for `want` slots asks `agentbus.contract.tenants.plan_shares` how to split them
(lowest pass first, by weight), pulls each tenant's share at once (`no_wait` without
`expires`) and offers what a tenant did not fill to the next ones. A tenant found empty
rests `EMPTY_REST_S` (a backlog of one tenant costs the empty ones at most one request
each per rest). A long poll (the loop waits for work) first pulls at once as above; if
nothing came, it long-polls every tenant side by side with the slots split among them
(never more requested in total than `want`), and once one answers with work the others
are cancelled (their reply subjects unsubscribed, as the priority loop's watch does).
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
from agentbus.contract.errors import PullError
from agentbus.contract.tenants import plan_shares, record_empty, record_starts

__all__ = ["EMPTY_REST_S", "MISSING_REST_S", "TenantConsumerLoop", "TenantPullers"]

EMPTY_REST_S: Final = 0.02
"""A tenant found empty is not asked again for this long while others have work."""
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
    ) -> None:
        self.pullers = {t: Puller(nc, stream=stream, durable=d) for t, d in durables.items()}
        self.weights = {t: weights.get(t, 1) for t in durables}
        self.passes: dict[str, float] = dict.fromkeys(durables, 0.0)
        self.pulled: dict[str, int] = dict.fromkeys(durables, 0)
        """Tasks pulled per tenant (also `agentbus_tenant_tasks_pulled_total`)."""
        self.on_pulled: Callable[[str, int], None] | None = None
        self._rest_until: dict[str, float] = dict.fromkeys(durables, 0.0)
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
        got = await self._pull_now(batch, deliver, rested=expires_s > 0)
        if got or expires_s <= 0:
            return got
        return await self._long_poll(batch, expires_s=expires_s, deliver=deliver)

    async def _pull_now(self, want: int, deliver: Callable[[Msg], None], *, rested: bool) -> int:
        now = time.monotonic()
        resting = frozenset(t for t, until in self._rest_until.items() if until > now)
        if rested:  # about to wait anyway: ask everyone first
            resting = frozenset()
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
                    got = await self.pullers[tenant].pull(share, expires_s=0, deliver=deliver)
                except PullError as e:
                    self._unavailable(tenant, e)
                    drained.add(tenant)
                    continue
                self._took(tenant, got)
                started += got
                if got < share:
                    drained.add(tenant)  # its unfilled slots go to the others next round
        return started

    async def _long_poll(
        self, want: int, *, expires_s: float, deliver: Callable[[Msg], None]
    ) -> int:
        # every tenant one slot while there are enough (by weight beyond that); else the
        # lowest passes (the others are asked again when this wait ends)
        if want >= len(self.pullers):
            shares = dict.fromkeys(self.pullers, 1)
            for tenant, n in plan_shares(free=want - len(self.pullers), passes=self.passes,
                                         weights=self.weights):  # fmt: skip
                shares[tenant] += n
            plan = list(shares.items())
        else:
            plan = plan_shares(free=want, passes=self.passes, weights=self.weights)
        answered = asyncio.Event()

        async def one(tenant: str, share: int) -> int:
            def deliver_first(msg: Msg) -> None:
                deliver(msg)
                answered.set()

            try:
                return await self.pullers[tenant].pull(
                    share, expires_s=expires_s, deliver=deliver_first
                )
            finally:
                answered.set()

        polls = {t: asyncio.ensure_future(one(t, n)) for t, n in plan}
        await answered.wait()
        for tenant, poll in polls.items():
            if not poll.done():
                await self.pullers[tenant].cancel()
        results = await asyncio.gather(*polls.values(), return_exceptions=True)
        total = 0
        for tenant, got in zip(polls, results, strict=True):
            if isinstance(got, PullError):
                self._unavailable(tenant, got)
                continue
            if isinstance(got, BaseException):
                raise got
            if got:
                self._took(tenant, got)
            total += got
        return total


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
