"""Publishing a job's live partial results (`progress.{job_id}`, the PROGRESS stream).

The items a step waits for anyway (a chunk summary, a reduce level, the final item) are
published directly (`publish`): the hot path pays no extra round trip, as
`Collector.record` confirms its chunk items side by side with its part writes, and no
queue or task. Token deltas are queued (`send`) and go out in rounds, one round in flight
per job: what is queued while a round is being confirmed goes in the next one, and the
deltas of one task in a round are joined into one item (`join_deltas`), so a fast token
stream costs one publish per round trip, not one per token.

Items that must not be missed (chunks, reduce levels, the final item) carry a
deterministic `Nats-Msg-Id` (`{job_id}:p:...`), so a step that is retried records its
item once; deltas are best effort and carry a fresh id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agentbus.contract import subjects
from agentbus.contract.messages import StreamItem, StreamKind, encode, new_id

__all__ = ["ProgressPublisher", "join_deltas", "progress_msg_id"]

log = logging.getLogger("agentbus.progress")

PublishRaw = Callable[..., Awaitable[object]]


def progress_msg_id(item: StreamItem) -> str:
    """The `Nats-Msg-Id` of an item: deterministic for every kind but deltas."""
    job = item.job_id
    match item.kind:
        case StreamKind.CHUNK:
            return f"{job}:p:c{item.level}.{item.index}"
        case StreamKind.REDUCE:
            return f"{job}:p:r{item.level}"
        case StreamKind.STARTED | StreamKind.COMPLETED | StreamKind.FAILED:
            return f"{job}:p:{item.kind.value}"
        case _:
            return f"{job}:p:d-{new_id()}"


@dataclass
class _Pending:
    item: StreamItem
    done: asyncio.Future[None]


@dataclass
class _Lane:
    waiting: list[_Pending] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def join_deltas(items: list[StreamItem]) -> list[tuple[StreamItem, list[int]]]:
    """Join the deltas of one task (same level and index) into one item, in order; every
    other item stays as it is. Returns each item sent with the positions it stands for."""
    out: list[tuple[StreamItem, list[int]]] = []
    open_delta: dict[tuple[int, int | None], int] = {}
    for pos, item in enumerate(items):
        if item.kind is StreamKind.DELTA:
            key = (item.level, item.index)
            at = open_delta.get(key)
            if at is not None and item.restart:  # what it joined so far is dropped
                out[at] = (item, [*out[at][1], pos])
                continue
            if at is not None:
                joined, positions = out[at]
                out[at] = (
                    joined.model_copy(update={"text": joined.text + item.text}),
                    [*positions, pos],
                )
                continue
            open_delta[key] = len(out)
        else:
            # a task's chunk item closes its deltas: later ones start a new item
            open_delta.pop((item.level, item.index), None)
        out.append((item, [pos]))
    return out


class ProgressPublisher:
    """Ordered, pipelined publishes of live partial results (see the module docstring)."""

    def __init__(self, publish_raw: PublishRaw, *, sender: str) -> None:
        self._publish_raw = publish_raw
        self._sender = sender
        self._lanes: dict[str, _Lane] = {}

    async def publish(self, item: StreamItem) -> None:
        """Publish `item` and wait until the stream has stored it: the path of the items
        a step waits for anyway (chunks, levels, the final item), with no task or queue
        of its own; the caller's order is the stream's."""
        await self._publish(subjects.job_progress(item.job_id), item)

    def send(self, item: StreamItem) -> asyncio.Future[None]:
        """Queue `item` (token deltas, without waiting); the future completes once the
        stream has stored it. Items queued for one job go out in their order."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieved)
        subject = subjects.job_progress(item.job_id)
        lane = self._lanes.setdefault(subject, _Lane())
        lane.waiting.append(_Pending(item, done))
        if lane.task is None:
            lane.task = loop.create_task(self._drain(subject, lane))
        return done

    async def _drain(self, subject: str, lane: _Lane) -> None:
        try:
            await asyncio.sleep(0)  # one loop turn: items queued side by side join
            while lane.waiting:
                group, lane.waiting = lane.waiting, []
                sent = join_deltas([p.item for p in group])
                outcomes = await asyncio.gather(
                    *(self._publish(subject, item) for item, _ in sent), return_exceptions=True
                )
                for (_, positions), outcome in zip(sent, outcomes, strict=True):
                    for pos in positions:
                        done = group[pos].done
                        if done.done():
                            continue
                        if isinstance(outcome, BaseException):
                            done.set_exception(outcome)
                        else:
                            done.set_result(None)
        finally:
            lane.task = None
            for p in lane.waiting:
                p.done.cancel()
            lane.waiting.clear()
            if self._lanes.get(subject) is lane:
                del self._lanes[subject]

    async def _publish(self, subject: str, item: StreamItem) -> None:
        msg_id = progress_msg_id(item)
        await self._publish_raw(
            subject,
            encode(item, sender=self._sender, msg_id=msg_id.replace(":", "-").replace(".", "-")),
            msg_id=msg_id,
            stream=subjects.PROGRESS_STREAM,
        )

    async def close(self) -> None:
        """Wait for the items already queued to be published (or to fail)."""
        for lane in list(self._lanes.values()):
            if lane.task is not None:
                with contextlib.suppress(BaseException):
                    await lane.task


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        exc = done.exception()
        if exc is not None:
            log.debug("progress item not published: %s", exc)
