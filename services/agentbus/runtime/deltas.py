"""Token deltas of the task a worker slot is running, published as live partial results.

The worker opens `collecting(bus, task)` around `skill.run`; a skill whose backend writes
text as it goes passes `task_delta_sink()` on (None outside a worker's task: an
`rpc.{skill}` request, a test), and each delta becomes a `delta` item on
`progress.{job_id}`. Deltas are queued without waiting (joined per round trip by the
bus's progress publisher) and best effort: the worker waits for them, briefly, before it
publishes the task's result, so a job's deltas come before its chunk item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from agentbus.bus.core import Bus
from agentbus.contract.messages import StreamItem, StreamKind, TaskAssign

__all__ = ["TaskDeltas", "collecting", "task_delta_sink"]

log = logging.getLogger("agentbus.worker")

FLUSH_TIMEOUT_S: Final = 5.0
_CURRENT: ContextVar[TaskDeltas | None] = ContextVar("agentbus_task_deltas", default=None)


class TaskDeltas:
    """The delta sink of one running task (a `DeltaSink`: `sink(text, restart=False)`)."""

    def __init__(self, bus: Bus, task: TaskAssign) -> None:
        self._bus = bus
        self._task = task
        self._sent: list[asyncio.Future[None]] = []
        self.deltas = 0

    def __call__(self, text: str, *, restart: bool = False) -> None:
        if not text and not restart:
            return
        t = self._task
        item = StreamItem(
            job_id=t.job_id, kind=StreamKind.DELTA, level=t.level, index=t.index, count=t.count,
            text=text, restart=restart, worker_id=self._bus.agent_id,
        )  # fmt: skip
        self._sent.append(self._bus.progress_soon(item))
        self.deltas += 1

    async def flush(self, *, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait (at most `timeout_s`) until the deltas sent so far are stored."""
        sent, self._sent = self._sent, []
        if not sent:
            return
        done, pending = await asyncio.wait(sent, timeout=timeout_s)
        for future in pending:
            future.cancel()
        failed = sum(1 for f in done if not f.cancelled() and f.exception() is not None)
        if failed or pending:
            log.debug(
                "task %s: %d delta(s) not published", self._task.task_id, failed + len(pending)
            )


@contextlib.contextmanager
def collecting(bus: Bus, task: TaskAssign) -> Iterator[TaskDeltas]:
    """Make `task_delta_sink()` the sink of `task` within this block."""
    sink = TaskDeltas(bus, task)
    token = _CURRENT.set(sink)
    try:
        yield sink
    finally:
        _CURRENT.reset(token)


def task_delta_sink() -> TaskDeltas | None:
    """The delta sink of the worker task running in this context, if any."""
    return _CURRENT.get()
