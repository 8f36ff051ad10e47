"""A consumer loop over one durable consumer per priority (high, normal, low).

Each round asks `agentbus.contract.priority.plan_pulls` which priorities to pull, in which
order and for how many slots (high first; a lower priority that waited its patience
goes first for its owed slots), and pulls them with immediate requests (`no_wait`, no
`expires`: the server answers at once, `404` when empty), never asking for more than the
free slots. A priority found empty rests for `EMPTY_REST_S` before it is asked again, so
a backlog of one priority costs no extra round trip per task.

When every priority is empty the replica waits on all of them at once: one long-poll per
priority, their batches adding up to the free slots (so it never receives more than it
can start). The first to deliver cancels the others (their reply subjects are
unsubscribed; the server drops a request nobody listens for), and the loop goes back to
ordered immediate pulls.
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
from agentbus.bus.core import REBIND_BACKOFF_S, Bus
from agentbus.bus.pull import Puller
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

__all__ = ["EMPTY_REST_S", "PARTIAL_WAIT_S", "PriorityConsumerLoop"]

log = logging.getLogger("agentbus.bus")

EMPTY_REST_S: Final = 0.02
"""A priority found empty is not asked again for this long (while others have work): a
high-priority task waits at most this much longer to be noticed during a backlog."""

PARTIAL_WAIT_S: Final = 0.1
"""Longest wait on some priorities only (fewer free slots than priorities)."""


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
    ) -> None:
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
        self._pullers: dict[Priority, Puller] = {}
        self._rest_until: dict[Priority, float] = dict.fromkeys(PRIORITIES, 0.0)
        self._counters = {p: metrics.TASKS_PULLED.labels(bus.service, p.value) for p in PRIORITIES}
        self._cancels: set[asyncio.Future[None]] = set()

    async def _bind(self) -> Puller:
        await self.close()
        for p in PRIORITIES:
            puller = Puller(self.bus.nc, stream=self.stream, durable=self.durables[p])
            await puller.start()
            self._pullers[p] = puller
        self._puller = self._pullers[Priority.NORMAL]
        return self._puller

    async def close(self) -> None:
        pullers, self._pullers = list(self._pullers.values()), {}
        self._puller = None
        for puller in pullers:
            await puller.close()

    def _took(self, priority: Priority, count: int) -> None:
        if count:
            self.skipped = record_starts(self.skipped, priority, count, patience=self.patience)
            self.pulled[priority] += count
            self._counters[priority].inc(count)
        else:
            self.skipped = record_empty(self.skipped, priority)
            self._rest_until[priority] = time.monotonic() + EMPTY_REST_S

    async def _round(self, free: int) -> int:
        """Immediate pulls by plan; how many tasks started."""
        now = time.monotonic()
        resting = frozenset(p for p in PRIORITIES if self._rest_until[p] > now)
        started = 0
        for priority, owed in plan_pulls(
            free=free, skipped=self.skipped, patience=self.patience, exclude=resting
        ):
            want = min(owed, free - started)
            if want <= 0:
                break
            got = await self._pullers[priority].pull(want, expires_s=0, deliver=self._spawn)
            self._took(priority, got)
            started += got
            if self._stopping.is_set() or self.paused:
                break
        return started

    async def _wait_any(self, free: int) -> None:
        """Long-poll every priority at once (batches adding up to `free`, high first);
        the first to deliver cancels the others."""
        waiting = list(PRIORITIES[: min(free, len(PRIORITIES))])
        batches = [free - (len(waiting) - 1)] + [1] * (len(waiting) - 1)
        # fewer free slots than priorities: the ones not waited on are asked again soon
        expires_s = self.fetch_timeout_s
        if len(waiting) < len(PRIORITIES):
            expires_s = min(expires_s, PARTIAL_WAIT_S)

        async def one(priority: Priority, batch: int) -> int:
            puller = self._pullers[priority]

            def deliver(msg: Msg) -> None:
                self._spawn(msg)
                for other in waiting:
                    if other is not priority:
                        cancel = asyncio.ensure_future(self._pullers[other].cancel())
                        self._cancels.add(cancel)
                        cancel.add_done_callback(self._cancels.discard)

            got = await puller.pull(batch, expires_s=expires_s, deliver=deliver)
            if got:
                self._took(priority, got)
            return got

        results = await asyncio.gather(
            *(one(p, b) for p, b in zip(waiting, batches, strict=True)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

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
                if not await self._round(free) and not self.paused:
                    await self._wait_any(free)
            finally:
                self._idle.set()
        except (AgentBusError, nats.errors.Error, OSError, TimeoutError) as e:
            if self._stopping.is_set() or self.bus.nc.is_closed:
                return
            self.bound = False
            delay = REBIND_BACKOFF_S[min(self._failures, len(REBIND_BACKOFF_S) - 1)]
            self._failures += 1
            log.warning(
                "consumers %s on %s unavailable (%s); rebinding in %.1fs",
                "/".join(self.durables.values()), self.stream, e or type(e).__name__, delay,
            )  # fmt: skip
            await self._pause_unless_stopping(delay)
            return
        self.bound = True
        self._failures = 0

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            await self._guarded(free)
        for cancel in list(self._cancels):
            with contextlib.suppress(asyncio.CancelledError):
                await cancel
        self.bound = False
