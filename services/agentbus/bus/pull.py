"""Pull requests to a durable JetStream consumer, each one followed to its end.

nats-py's `fetch` gives up on a pull request when its own timer fires, a little before
the server's `expires` ends the request, and the late `408` then makes its next `fetch`
send a second request. An idle `fetch` loop so keeps two requests open on the server most
of the time, each for every free slot: when work arrives the consumer delivers up to twice
what the replica has room for, and the extra messages wait in the subscription, unacked
and without `in_progress`, until `ack_wait` redelivers them.

`Puller` keeps at most one request open and waits for the server to end it. A request
asks for `no_wait` with `expires`: the server delivers what is available, or waits up to
`expires` for the first message, then ends the request with a status (`404`/`408`); or
it ends once `batch` messages were delivered.

A request can also be left before its end: `cancel` (a wait on several consumers ends
when one of them answers) or no end within `expires` plus a margin (the connection
dropped). JetStream has no way to withdraw a pull request, and unsubscribing its reply
subject loses whatever the server had already sent (unacked, so redelivered only after
`ack_wait`: 30 s by default; seen as jobs accepted 30 s late in a burst). So a request left
early keeps its reply subscription until the server would have ended it, and what still
comes for it is *held*: handed to the next `pull` before any new request is sent, or
handed back (`nak`, at once available to every replica) if no pull takes it within
`HOLD_MAX_S`. A held message wakes the owner (`on_held`): a wait elsewhere ends, so
that the held message is started without waiting for that wait's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.contract.errors import PullError

__all__ = ["HOLD_MAX_S", "PullError", "PullSource", "Puller"]

log = logging.getLogger("agentbus.pull")

_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_HEARTBEAT: Final = "100"
_NO_RESPONDERS: Final = "503"
_REQUEST_ENDED: Final = frozenset({"404", "408"})
"""No (more) messages / request expired: the consumer answered, the request is over."""
ANSWER_MARGIN_S: Final = 1.0
"""How long past `expires` the server's end of a request is waited for before the request
is taken as lost (the connection dropped and the server forgot it)."""
_NS_PER_S: Final = 1_000_000_000
HOLD_MAX_S: Final = 1.0
"""Longest a held message waits for a pull before it is handed back (`nak`): well under
any `ack_wait`, so a held message is never redelivered behind this replica's back."""


@dataclass
class _Request:
    reply: str
    batch: int
    expires_s: float
    deliver: Callable[[Msg], None]
    ended: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    received: int = 0
    error: PullError | None = None

    def end(self, error: PullError | None = None) -> None:
        if not self.ended.done():
            self.error = error
            self.ended.set_result(None)


class PullSource(Protocol):
    """What a consumer loop pulls from: one `Puller`, or a group of them
    (`agentbus.bus.tenant_pull.TenantPullers`)."""

    async def pull(
        self, batch: int, *, expires_s: float, deliver: Callable[[Msg], None]
    ) -> int: ...

    async def close(self) -> None: ...


class Puller:
    """The pull requests of one durable consumer, at most one open at a time."""

    def __init__(self, nc: NatsClient, *, stream: str, durable: str) -> None:
        self._nc = nc
        self.stream = stream
        self.durable = durable
        self._api_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._sub: Subscription | None = None
        self._reply = ""
        self._current: _Request | None = None
        self._left: set[Subscription] = set()
        """Reply subscriptions of requests left early, kept until the server ends them."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: deque[tuple[float, Msg]] = deque()
        self.on_held: Callable[[], None] | None = None
        """Called when a message is held (the owner's wait on other consumers ends)."""
        self.stale = 0
        """Messages that came for a request left early (held for the next pull)."""
        self.handed_back = 0
        """Held messages no pull took within `HOLD_MAX_S` (handed back with `nak`)."""

    @property
    def open(self) -> bool:
        """A request is on the server: its messages may still arrive."""
        return self._current is not None

    @property
    def held(self) -> int:
        """Messages held for the next pull."""
        return len(self._held)

    async def start(self) -> None:
        """Subscribe a new reply subject (under the connection's per-user inbox prefix)."""
        reply = self._nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            await self._on_msg(reply, msg)

        self._sub = await self._nc.subscribe(reply, cb=on_msg)
        self._reply = reply

    async def close(self) -> None:
        if self._current is not None:
            self._current.end()
        for sub in [self._sub, *self._left]:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = None
        self._left.clear()
        for task in self._tasks:
            task.cancel()
        held, self._held = self._held, deque()
        for _, msg in held:  # (`_on_msg` holds nothing once unsubscribed)
            with contextlib.suppress(Exception):
                await msg.nak()

    async def pull(self, batch: int, *, expires_s: float, deliver: Callable[[Msg], None]) -> int:
        """Ask for up to `batch` messages and hand each to `deliver` as it arrives; return
        how many came once the server has ended the request (or it is lost). With
        `expires_s` 0 the server answers at once with what it has.

        Messages held (see the module) are handed over first, without a new request.

        Raises `PullError` naming the consumer when it refuses the request."""
        if self._held:
            given = 0
            while self._held and given < batch:
                deliver(self._held.popleft()[1])
                given += 1
            return given
        if self._sub is None:
            await self.start()
        request = self._current = _Request(self._reply, batch, expires_s, deliver)
        body: dict[str, object] = {"batch": batch, "no_wait": True}
        if expires_s > 0:  # else: what is there now, at once (`404` when nothing)
            body["expires"] = int(expires_s * _NS_PER_S)
        try:
            await self._nc.publish(self._api_subject, json.dumps(body).encode(), self._reply)
            try:
                async with asyncio.timeout(expires_s + ANSWER_MARGIN_S):
                    await request.ended
            except TimeoutError:
                log.info("pull request on %s got no answer; taking a new reply subject",
                         self.durable)  # fmt: skip
                self._leave(linger_s=expires_s + ANSWER_MARGIN_S)
        finally:
            self._current = None
        if request.error is not None:
            raise request.error
        return request.received

    async def cancel(self) -> None:
        """Stop waiting for the open request now. The server keeps it until it would have
        ended: what still comes for it is held (the module says why)."""
        request = self._current
        if request is None:
            return
        request.end()
        self._leave(linger_s=request.expires_s + ANSWER_MARGIN_S)

    def _leave(self, *, linger_s: float) -> None:
        """Keep the current reply subscription for `linger_s` (what comes on it is held);
        the next request takes a new reply subject."""
        old, self._sub = self._sub, None
        if old is None:
            return
        self._left.add(old)

        async def drop() -> None:
            await asyncio.sleep(linger_s)
            if old in self._left:
                self._left.discard(old)
                with contextlib.suppress(Exception):
                    await old.unsubscribe()

        self._spawn(drop())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def hold(self, msg: Msg) -> None:
        """Keep `msg` (of this consumer, not started) for the next pull."""
        self._held.append((time.monotonic(), msg))
        if len(self._held) == 1:
            self._spawn(self._hand_back_unclaimed())
        if self.on_held is not None:
            self.on_held()

    async def _hand_back_unclaimed(self) -> None:
        """Hand back (`nak`) held messages that no pull took within `HOLD_MAX_S`."""
        while self._held:
            held_at, _ = self._held[0]
            wait_s = held_at + HOLD_MAX_S - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            _, msg = self._held.popleft()
            self.handed_back += 1
            log.info("handing back a held message of %s (no pull took it)", self.durable)
            with contextlib.suppress(Exception):
                await msg.nak()

    async def _on_msg(self, reply: str, msg: Msg) -> None:
        request = self._current
        status = (msg.headers or {}).get(_STATUS)
        if request is None or reply != request.reply:
            if status is None:  # a message for a request left early: the next pull's
                self.stale += 1
                self.hold(msg)
            return
        if status is None:
            request.received += 1
            request.deliver(msg)
            if request.received >= request.batch:
                request.end()
        elif status in _REQUEST_ENDED:
            request.end()
        elif status != _HEARTBEAT:
            what = " ".join((msg.headers or {}).get(_DESCRIPTION, "").split("\n")[0].split())
            if status == _NO_RESPONDERS:
                what = "no responders (no such consumer, or JetStream unavailable)"
            request.end(PullError(f"consumer {self.durable} on {self.stream}: {status} {what}"))
