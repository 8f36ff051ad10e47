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
it ends once `batch` messages were delivered. A request given up on (no end within
`expires` plus a margin: the connection dropped) leaves its reply subscription behind for
a while, so that a late message of it is recognised and handed back at once (`nak`),
never taken for the next request's; the next request gets a new reply subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.contract.errors import PullError

__all__ = ["PullError", "PullSource", "Puller"]

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


@dataclass
class _Request:
    reply: str
    batch: int
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
        self._abandoned: set[Subscription] = set()
        self._dropping: set[asyncio.Task[None]] = set()
        self.stale = 0
        """Messages that came for a request given up on (handed back with `nak`)."""

    @property
    def open(self) -> bool:
        """A request is on the server: its messages may still arrive."""
        return self._current is not None

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
        for sub in [self._sub, *self._abandoned]:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = None
        self._abandoned.clear()
        for task in self._dropping:
            task.cancel()

    async def pull(self, batch: int, *, expires_s: float, deliver: Callable[[Msg], None]) -> int:
        """Ask for up to `batch` messages and hand each to `deliver` as it arrives; return
        how many came once the server has ended the request (or it is lost). With
        `expires_s` 0 the server answers at once with what it has.

        Raises `PullError` naming the consumer when it refuses the request."""
        if self._sub is None:
            await self.start()
        request = self._current = _Request(self._reply, batch, deliver)
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
                await self._abandon(expires_s + ANSWER_MARGIN_S)
        finally:
            self._current = None
        if request.error is not None:
            raise request.error
        return request.received

    async def cancel(self) -> None:
        """End the open request now: its reply subject is unsubscribed, and the server
        drops a pull request nobody listens for any more (a message it had already sent
        goes unacknowledged and is redelivered after `ack_wait`: a rare race)."""
        request, sub = self._current, self._sub
        if request is None:
            return
        self._sub = None  # the next request takes a new reply subject
        request.end()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _abandon(self, linger_s: float) -> None:
        """Keep the old reply subscription for `linger_s` (late messages are handed back),
        and take a new one for the next request."""
        old = self._sub
        self._sub = None
        await self.start()
        if old is None:
            return
        self._abandoned.add(old)

        async def drop() -> None:
            await asyncio.sleep(linger_s)
            if old in self._abandoned:
                self._abandoned.discard(old)
                with contextlib.suppress(Exception):
                    await old.unsubscribe()

        task = asyncio.get_running_loop().create_task(drop())
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _on_msg(self, reply: str, msg: Msg) -> None:
        request = self._current
        status = (msg.headers or {}).get(_STATUS)
        if request is None or reply != request.reply:
            if status is None:  # a message for a request given up on: anyone may take it
                self.stale += 1
                log.info("handing back a message of an abandoned pull on %s", self.durable)
                with contextlib.suppress(Exception):
                    await msg.nak()
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
