"""Pull-consumer loops: fetch only as many messages as there are free slots, hand each to
its handler, and rebind after the consumer or the server went away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.msg import Msg

from agentbus.bus.core import REBIND_BACKOFF_S, Bus
from agentbus.bus.headers import delivery_count
from agentbus.bus.pull import Puller, PullSource
from agentbus.contract.errors import AgentBusError
from agentbus.observability import metrics

log = logging.getLogger("agentbus.bus")

_HANDLER_RETRY_MAX_S: Final = 30.0


Handler = Callable[[Msg], Awaitable[None]]


class ConsumerLoop:
    """Pull from a durable consumer with at most `concurrency` messages in flight.

    Each pull request asks for exactly the number of free slots and is followed until the
    server ends it (`agentbus.pull.Puller`), so a replica never holds messages it cannot
    start (they stay available to other replicas). The handler owns ack/nak/term; an
    exception escaping it naks the message with `retry_delay_s`.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        concurrency: int,
        fetch_timeout_s: float = 1.0,
        retry_delay_s: float = 1.0,
        ensure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.concurrency = concurrency
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_delay_s = retry_delay_s
        self.ensure = ensure
        self.bound = False
        self._stopping = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()  # a slot freed up (cheaper than asyncio.wait on all)
        self._puller: PullSource | None = None
        self._idle = asyncio.Event()  # no pull request open (nothing more can arrive)
        self._idle.set()
        self._failures = 0
        labels = (bus.service, durable)
        self._g_inflight = metrics.WORKER_IN_FLIGHT.labels(*labels)
        self._g_free = metrics.WORKER_FREE_SLOTS.labels(*labels)
        self._redeliveries = metrics.REDELIVERIES.labels(bus.service, stream)
        self._errors = metrics.HANDLER_ERRORS.labels(bus.service, durable)
        metrics.init_consumer(bus.service, stream=stream, consumer=durable)
        self._g_free.set(concurrency)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        """Open no new pull request; `wait_paused` returns once none is open any more."""
        self._resumed.clear()

    async def wait_paused(self, *, timeout_s: float) -> bool:
        """After `pause`, wait until no pull request is open: from then on no message
        reaches this loop until `resume` (messages of the last request, which arrived
        before, have started). False if that did not happen within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self.paused and self._idle.is_set()

    def resume(self) -> None:
        self._resumed.set()

    def stop(self) -> None:
        self._stopping.set()
        self._resumed.set()
        self._freed.set()

    async def _bind(self) -> PullSource:
        if self._puller is not None:
            await self._puller.close()
            self._puller = None
        if self.ensure is not None:
            await self.ensure()
        puller = Puller(self.bus.nc, stream=self.stream, durable=self.durable)
        await puller.start()
        self._puller = puller  # `bound` once the consumer answers a pull (it may not exist)
        return puller

    def _spawn(self, msg: Msg) -> None:
        if delivery_count(msg) > 1:
            self._redeliveries.inc()
        task = asyncio.create_task(self._handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._done)
        self._update_gauges()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._freed.set()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._g_inflight.set(len(self._inflight))
        self._g_free.set(self.concurrency - len(self._inflight))

    async def _finished(self, msg: Msg) -> None:
        """The handler of `msg` returned (or raised): a hook for subclasses."""

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handle_once(msg)
        finally:
            await self._finished(msg)

    async def _handle_once(self, msg: Msg) -> None:
        try:
            await self.handler(msg)
        except Exception:
            self._errors.inc()
            log.exception("handler for %s failed; message will be retried", self.durable)
            # exponential: an outage (a leader election, a restart) must not use up a
            # bounded consumer's deliveries in a few seconds
            delay = self.retry_delay_s * 2 ** min(delivery_count(msg) - 1, 8)
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(delay, _HANDLER_RETRY_MAX_S))

    async def _pull(self, batch: int, deliver: Callable[[Msg], None]) -> None:
        """One pull request for up to `batch` messages, each handed to `deliver` as it
        arrives, followed until the server ends it (`agentbus.pull`: never more messages
        than asked for); binds and rebinds as needed."""
        try:
            if self._puller is None or not self.bound:
                await self._bind()
            if not self.bus.nc.is_connected:
                await self._pause_unless_stopping(0.1)
                return
            assert self._puller is not None
            if self.paused or self._stopping.is_set():
                return  # (paused while binding: `wait_paused` may have returned already)
            self._idle.clear()
            try:
                await self._puller.pull(batch, expires_s=self.fetch_timeout_s, deliver=deliver)
            finally:
                self._idle.set()
        except (AgentBusError, nats.errors.Error, OSError, TimeoutError) as e:
            await self._unavailable(e, what=f"consumer {self.durable}")
            return
        self.bound = True
        self._failures = 0

    async def _unavailable(self, e: BaseException, *, what: str) -> None:
        """The consumer could not be bound or pulled: rebind after a growing backoff
        (nothing to do when stopping or closed)."""
        if self._stopping.is_set() or self.bus.nc.is_closed:
            return
        self.bound = False
        delay = REBIND_BACKOFF_S[min(self._failures, len(REBIND_BACKOFF_S) - 1)]
        self._failures += 1
        log.warning(
            "%s on %s unavailable (%s); rebinding in %.1fs",
            what, self.stream, e or type(e).__name__, delay,
        )  # fmt: skip
        await self._pause_unless_stopping(delay)

    async def _pause_unless_stopping(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _fetch(self, batch: int) -> list[Msg]:
        """Up to `batch` messages ([] when none came within `fetch_timeout_s`)."""
        msgs: list[Msg] = []
        await self._pull(batch, msgs.append)
        return msgs

    async def run(self) -> None:
        """Pull and dispatch until `stop()`; in-flight handlers are left to `wait_idle`.
        Each message starts as it arrives; a request asks for the free slots only."""
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            await self._pull(free, self._spawn)
        self.bound = False

    async def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait for in-flight handlers; True when all finished within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(set(self._inflight), timeout=left)
        return True

    async def close(self) -> None:
        if self._puller is not None:
            await self._puller.close()
            self._puller = None


BatchHandler = Callable[[list[Msg]], Coroutine[Any, Any, None]]


class BatchConsumerLoop(ConsumerLoop):
    """Like `ConsumerLoop`, but hands whole fetched batches (up to `batch_size`) to one
    handler at a time: for consumers that commit many messages together (the archiver)."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        batch_handler: BatchHandler,
        batch_size: int,
        fetch_timeout_s: float = 0.5,
        linger_s: float = 0.0,
        ensure: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        async def unused(_msg: Msg) -> None:  # per-message path is not used here
            raise NotImplementedError

        super().__init__(
            bus,
            stream=stream,
            durable=durable,
            handler=unused,
            concurrency=batch_size,
            fetch_timeout_s=fetch_timeout_s,
            ensure=ensure,
        )
        self.batch_handler = batch_handler
        self.linger_s = linger_s

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._resumed.wait()
            if self._stopping.is_set():
                break
            msgs = await self._fetch(self.concurrency)
            if not msgs:
                continue
            for msg in msgs:
                if delivery_count(msg) > 1:
                    self._redeliveries.inc()
            task = asyncio.create_task(self.batch_handler(msgs))
            self._inflight.add(task)
            task.add_done_callback(self._done)
            self._g_inflight.set(len(msgs))
            try:
                await asyncio.shield(task)
            except Exception:
                self._errors.inc()
                log.exception(
                    "batch handler for %s failed; %d messages will be retried",
                    self.durable,
                    len(msgs),
                )
                await asyncio.gather(
                    *(m.nak(delay=self.retry_delay_s) for m in msgs), return_exceptions=True
                )
            self._g_inflight.set(0)
            if self.linger_s and len(msgs) < self.concurrency // 4:
                # a trickle: let the next batch fill up rather than paying a commit for a
                # handful of messages (bounded extra latency, far less work per message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.linger_s)
        self.bound = False
