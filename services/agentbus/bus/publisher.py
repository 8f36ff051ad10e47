"""JetStream publishes with confirmation, at a fraction of nats-py's per-call cost.

`JetStreamContext.publish` goes through `Client.request`: per call a fresh reply token,
`asyncio.wait_for` (a timer and an extra future), and a `PubAck` built field by field.
Measured on this project's machine with 64 publishes in flight, that is ~31 µs of client
CPU per publish; this module's path is ~14 µs (`bench/` shows the pipeline effect), which
is why it exists instead of the library call. It keeps the same contract:

- one reply subscription (`<inbox>.<n>`, under the connection's inbox prefix, so the
  per-service NATS permissions still hold) and a future per publish;
- one sweeper task fails publishes whose confirmation did not come within their timeout
  (`nats.errors.TimeoutError`), instead of a timer per call;
- a publish still unconfirmed when the connection has come back from a reconnect fails
  at once the same way: its confirmation went to the old connection and is lost, and
  waiting out the whole timeout would hold everything queued behind it (the event
  emitter's group commit) for that long. The caller's retry reuses the message id, so
  a publish that did land is deduplicated by the stream;
- a "no responders" status raises `nats.errors.NoRespondersError`, a JetStream API error
  raises `nats.js.errors.APIError` (its specific subclass), as nats-py does;
- publishing itself (buffering through a reconnect, header encoding) is nats-py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

__all__ = ["JetStreamPublisher"]

_SWEEP_EVERY_S: Final = 0.25
_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS_STATUS: Final = "503"


class JetStreamPublisher:
    """Confirmed JetStream publishes over one connection (see the module docstring)."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._starting: asyncio.Lock | None = None
        self._next = 0
        self._pending: dict[str, tuple[asyncio.Future[Msg], float, int]] = {}
        """reply subject -> (confirmation, deadline, the connection's reconnects then)"""
        self._sweeper: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._sub is not None:
                return
            prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{prefix}.*", cb=self._on_reply)
            self._prefix = prefix + "."
            self._sweeper = asyncio.create_task(self._sweep())

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> PubAck:
        """Publish and wait for the stream's confirmation."""
        if self._sub is None:
            await self._start()
        self._next += 1
        reply = f"{self._prefix}{self._next}"
        done: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending[reply] = (done, time.monotonic() + timeout_s, self._reconnects())
        try:
            await self._nc.publish(subject, data, reply=reply, headers=headers)
            msg = await done
        finally:
            self._pending.pop(reply, None)
        return _pub_ack(msg, subject=subject)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg)

    def _reconnects(self) -> int:
        return int(self._nc.stats["reconnects"])

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            now = time.monotonic()
            reconnects = self._reconnects() if self._nc.is_connected else -1
            late = [
                reply
                for reply, (_, deadline, sent_at) in self._pending.items()
                if deadline <= now or 0 <= sent_at < reconnects
            ]
            for reply in late:
                done = self._pending.pop(reply)[0]
                if not done.done():
                    done.set_exception(nats.errors.TimeoutError())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for done, _, _ in self._pending.values():
            if not done.done():
                done.set_exception(nats.errors.ConnectionClosedError())
        self._pending.clear()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


def _pub_ack(msg: Msg, *, subject: str) -> PubAck:
    if not msg.data and msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS_STATUS:
        raise nats.errors.NoRespondersError
    try:
        resp: dict[str, Any] = json.loads(msg.data)
    except ValueError as e:
        raise nats.js.errors.APIError(description=f"unreadable PubAck for {subject}") from e
    error = resp.get("error")
    if error is not None:
        try:
            nats.js.errors.APIError.from_error(error)  # raises the specific APIError
        except TypeError as e:  # an error object of a shape nats-py does not know
            raise nats.js.errors.APIError(description=str(error)[:200]) from e
    return PubAck(
        stream=resp["stream"],
        seq=resp["seq"],
        domain=resp.get("domain"),
        duplicate=resp.get("duplicate"),
    )
