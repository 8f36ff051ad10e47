"""Reading a job's live partial results (`progress.{job_id}`, the PROGRESS stream).

A named consumer filtered on the job's subject (`agentbus.bus.ordered_read`, whose
creation NATS permissions can limit to a tenant's jobs) delivers the items in stream
order; a lost one is replaced from the last sequence seen, so the reader gets each item
once. The stream sequence is the cursor: `after=cursor` starts exactly after that item.
Reading ends with the job's final item (`completed` or `failed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from agentbus.bus.ordered_read import SubjectReader
from agentbus.contract import subjects
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import DocumentRef, StreamItem, StreamKind, decode

__all__ = ["PartialResult", "read_partial_results"]

_POLL_S: Final = 1.0
_BATCH: Final = 256


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
    nc: NatsClient,
    after: int | None = None,
    max_bytes: int | None = None,
) -> AsyncIterator[PartialResult]:
    """The job's items after the cursor `after` (from the first when None), until its
    final item. Raises `BusError` naming the subject when the stream cannot be read."""
    subject = subjects.job_progress(job_id)
    if after is not None and after < 0:
        raise ValueError(f"after={after}: a cursor is a stream sequence (0 or more)")
    reader = SubjectReader(js, nc, stream=subjects.PROGRESS_STREAM, subject=subject, after=after)
    try:
        while True:
            msgs = await reader.read(batch=_BATCH, wait_s=_POLL_S)
            if not msgs:
                # a quiet spell: is the reader past the job's final item, or was it not
                # given what the subject holds (its consumer lost: take a new one)?
                last = await _last_item(js, subject)
                if last is None or last.seq is None:
                    continue
                if last.seq > reader.position:
                    await reader.restart()
                elif _is_final(last, max_bytes=max_bytes):
                    return
                continue
            for msg in msgs:
                try:
                    item = decode(msg.data, StreamItem, max_bytes=max_bytes).payload
                except MessageDecodeError:
                    continue  # not ours to stop on: a reader skips what it cannot read
                yield PartialResult.of(item, cursor=int(msg.metadata.sequence.stream))
                if item.kind.final:
                    return
    finally:
        await reader.close()


async def _last_item(js: JetStreamContext, subject: str) -> RawStreamMsg | None:
    """The subject's last item, by a direct get (`$JS.API.DIRECT.GET.PROGRESS.{subject}`,
    which NATS permissions can limit to a tenant's jobs); None when there is none yet (or
    JetStream is busy: the caller asks again after its next quiet spell)."""
    try:
        return await js.get_last_msg(subjects.PROGRESS_STREAM, subject, direct=True)
    except (nats.errors.Error, TimeoutError):
        return None


def _is_final(item: RawStreamMsg, *, max_bytes: int | None) -> bool:
    if item.data is None:
        return False
    try:
        return decode(item.data, StreamItem, max_bytes=max_bytes).payload.kind.final
    except MessageDecodeError:
        return False
