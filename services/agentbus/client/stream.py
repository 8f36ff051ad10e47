"""Reading a job's live partial results (`progress.{job_id}`, the PROGRESS stream).

An ephemeral ordered consumer (deliver by start sequence, filtered on the job's subject)
delivers the items in stream order; nats-py recreates it from the last sequence seen
after a gap or a reconnect, so the reader gets each item once. The stream sequence is
the cursor: `after=cursor` starts exactly after that item. Reading ends with the job's
final item (`completed` or `failed`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from agentbus.contract import subjects
from agentbus.contract.errors import BusError, MessageDecodeError
from agentbus.contract.messages import DocumentRef, StreamItem, StreamKind, decode

__all__ = ["PartialResult", "read_partial_results"]

_POLL_S: Final = 1.0
_INACTIVE_THRESHOLD_S: Final = 60.0
"""The server removes a reader's ephemeral consumer this long after the reader is gone."""


@dataclass(frozen=True, slots=True)
class PartialResult:
    """One item of a job's live partial results."""

    cursor: int
    """The stream sequence: pass it as `after=` to resume right after this item."""
    kind: StreamKind
    job_id: str
    level: int
    index: int | None
    count: int | None
    text: str
    summary_ref: DocumentRef | None
    error: str | None
    worker_id: str | None
    restart: bool = False
    """On a delta: drop this task's text so far (the backend retried)."""

    @property
    def final(self) -> bool:
        return self.kind.final

    @classmethod
    def of(cls, item: StreamItem, *, cursor: int) -> PartialResult:
        return cls(
            cursor=cursor, kind=item.kind, job_id=item.job_id, level=item.level,
            index=item.index, count=item.count, text=item.text, summary_ref=item.summary_ref,
            error=item.error, worker_id=item.worker_id, restart=item.restart,
        )  # fmt: skip

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "cursor": self.cursor,
            "kind": self.kind.value,
            "level": self.level,
        }
        for name in ("index", "count", "worker_id", "error"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.text:
            out["text"] = self.text
        if self.restart:
            out["restart"] = True
        if self.summary_ref is not None:
            out["summary_ref"] = self.summary_ref.model_dump()
        return out


async def read_partial_results(
    js: JetStreamContext,
    job_id: str,
    *,
    after: int | None = None,
    max_bytes: int | None = None,
) -> AsyncIterator[PartialResult]:
    """The job's items after the cursor `after` (from the first when None), until its
    final item. Raises `BusError` naming the subject when the stream cannot be read."""
    subject = subjects.job_progress(job_id)
    if after is not None and after < 0:
        raise ValueError(f"after={after}: a cursor is a stream sequence (0 or more)")
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
    )
    try:
        sub = await js.subscribe(
            subject,
            stream=subjects.PROGRESS_STREAM,
            ordered_consumer=True,
            config=config,
            inactive_threshold=_INACTIVE_THRESHOLD_S,
        )
    except (nats.errors.Error, TimeoutError) as e:
        raise BusError(f"cannot read {subject}: {e or type(e).__name__}") from e
    position = after or 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_POLL_S)
            except nats.errors.TimeoutError:
                # a quiet spell: is the reader already past the job's final item?
                if await _ended_before(js, subject, position, max_bytes=max_bytes):
                    return
                continue
            position = int(msg.metadata.sequence.stream)
            try:
                item = decode(msg.data, StreamItem, max_bytes=max_bytes).payload
            except MessageDecodeError:
                continue  # not ours to stop on: a reader skips what it cannot read
            yield PartialResult.of(item, cursor=position)
            if item.kind.final:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _ended_before(
    js: JetStreamContext, subject: str, position: int, *, max_bytes: int | None
) -> bool:
    """Is the job's last item a final one at or before `position` (a reader resuming
    after the final item has nothing more to read)?"""
    try:
        last = await js.get_last_msg(subjects.PROGRESS_STREAM, subject)
    except (nats.errors.Error, TimeoutError):
        return False  # no item yet (or JetStream is busy): keep waiting
    if last.seq is None or last.seq > position or last.data is None:
        return False
    try:
        return decode(last.data, StreamItem, max_bytes=max_bytes).payload.kind.final
    except MessageDecodeError:
        return False
