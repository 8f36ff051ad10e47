"""Group commit of agent events: the events that concurrent steps emit while one publish
is in flight travel together in one JetStream message.

Every `emit` still waits for the stream's confirmation of its own event (so a step is never
acknowledged before its event is stored), but N concurrent steps cost one publish, one
stored message and one archiver fetch/ack instead of N. Alone (nothing else pending), an
event goes out as a plain `AgentEvent` envelope with its own id as `Nats-Msg-Id`, exactly
as a single publish would; two or more go out as one `AgentEventBatch` whose id is fresh
(a transient-failure retry of that publish reuses it, so the stream drops the copy).
Each event of a batch carries its own trace context; the archiver stores each event once
whichever form it came in (its id is the archive's key).

nats-py's `publish_async` is not used: it has no timeout for a lost confirmation and no
retry with the same id, which `Bus.publish_raw` gives us; this module only decides what
goes into each publish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from agentbus.contract.headers import TRACEPARENT_HEADER, TRACESTATE_HEADER
from agentbus.contract.messages import AgentEvent, AgentEventBatch, encode, new_id
from agentbus.observability import metrics, telemetry

__all__ = ["DEFAULT_MAX_EVENTS_PER_MESSAGE", "EventEmitter", "PublishRaw"]

DEFAULT_MAX_EVENTS_PER_MESSAGE: Final = 256

PublishRaw = Callable[..., Awaitable[object]]
"""`Bus.publish_raw(subject, data, *, msg_id, stream, headers)`."""


@dataclass
class _Pending:
    event: AgentEvent
    headers: dict[str, str]
    done: asyncio.Future[None]


@dataclass
class _Lane:
    """The events waiting for one subject, and the task publishing them."""

    waiting: list[_Pending] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class EventEmitter:
    """Publishes a service's events with group commit (see the module docstring)."""

    def __init__(
        self,
        publish_raw: PublishRaw,
        *,
        sender: str,
        service: str,
        stream: str,
        max_events_per_message: int = DEFAULT_MAX_EVENTS_PER_MESSAGE,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        if max_events_per_message < 1:
            raise ValueError("max_events_per_message must be at least 1")
        self._publish_raw = publish_raw
        self._sender = sender
        self._messages = metrics.EVENT_MESSAGES.labels(service)
        self._stream = stream
        self._max_events = max_events_per_message
        self._max_bytes = max_message_bytes
        self._lanes: dict[str, _Lane] = {}

    def enqueue(self, subject: str, event: AgentEvent) -> asyncio.Future[None]:
        """Queue `event` for the next publish on `subject`; the future completes once the
        stream has stored it (or fails with the publish). Cancelling the future withdraws
        nobody else's event, and this one's only if its publish has not started."""
        headers: dict[str, str] = {}
        telemetry.inject(headers)
        loop = asyncio.get_running_loop()
        if self._max_events == 1:
            return loop.create_task(self._send(subject, [event], [headers]))
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieved)
        lane = self._lanes.setdefault(subject, _Lane())
        lane.waiting.append(_Pending(event, headers, done))
        if lane.task is None:
            lane.task = loop.create_task(self._drain(subject, lane))
        return done

    async def _drain(self, subject: str, lane: _Lane) -> None:
        try:
            # one loop turn, so that the events of steps running side by side join
            await asyncio.sleep(0)
            while lane.waiting:
                group = [p for p in lane.waiting[: self._max_events] if not p.done.cancelled()]
                del lane.waiting[: self._max_events]
                if not group:
                    continue
                try:
                    await self._send(subject, [p.event for p in group], [p.headers for p in group])
                except asyncio.CancelledError:
                    for p in group:
                        p.done.cancel()
                    raise
                except Exception as e:
                    for p in group:
                        if not p.done.done():
                            p.done.set_exception(e)
                    continue
                for p in group:
                    if not p.done.done():
                        p.done.set_result(None)
        finally:
            lane.task = None
            for p in lane.waiting:  # cancelled while events were still waiting
                p.done.cancel()
            lane.waiting.clear()

    async def _send(
        self, subject: str, events: list[AgentEvent], headers: list[dict[str, str]]
    ) -> None:
        if len(events) == 1:
            event = events[0]
            await self._publish_raw(
                subject,
                encode(event, sender=self._sender, msg_id=event.event_id),
                msg_id=event.event_id,
                stream=self._stream,
                headers=headers[0],
            )
            self._messages.inc()
            return
        batch = AgentEventBatch(
            events=[_with_trace(ev, hdrs) for ev, hdrs in zip(events, headers, strict=True)]
        )
        batch_id = f"batch-{new_id()}"
        data = encode(batch, sender=self._sender, msg_id=batch_id)
        if len(data) > self._max_bytes:
            half = len(events) // 2
            await self._send(subject, events[:half], headers[:half])
            await self._send(subject, events[half:], headers[half:])
            return
        await self._publish_raw(subject, data, msg_id=batch_id, stream=self._stream)
        self._messages.inc()

    async def close(self) -> None:
        """Wait for the events already emitted to be published (or to fail)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _retrieved(done: asyncio.Future[None]) -> None:
    """Mark the outcome as seen: a caller cancelled while waiting never reads it."""
    if not done.cancelled():
        done.exception()


def _with_trace(event: AgentEvent, headers: Mapping[str, str]) -> AgentEvent:
    traceparent = headers.get(TRACEPARENT_HEADER)
    if not traceparent:
        return event
    return event.model_copy(
        update={
            "traceparent": traceparent,
            "tracestate": headers.get(TRACESTATE_HEADER) or None,
        }
    )
