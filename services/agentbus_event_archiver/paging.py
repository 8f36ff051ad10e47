"""Pages of `rpc.history`: the cursor and the byte budget of a reply (pure, no I/O).

Order: a job's events are read in the total order of the key (ts, stream_seq, event_id).
Every part is fixed once an event is stored, and the event id is unique, so the order is
stable and two events never compare equal: events with the same timestamp (those of one
`AgentEventBatch` also share their stream sequence) are neither skipped nor repeated across
pages. The store reads a page with keyset pagination, `WHERE (ts, stream_seq, event_id) >
cursor ORDER BY ts, stream_seq, event_id LIMIT n`, on the index of that key.

Cursor: the key of the last event of a page, as `v1.{ts in µs since the epoch}.{stream
seq}.{event id}`. Clients treat it as opaque and only send it back; the version prefix
lets a later order refuse an old cursor with a clear error instead of misreading it.

Budget: a reply must stay below the server's max_payload or NATS refuses to deliver it.
`PageBuilder` adds events while the encoded reply (envelope, job id and the longest cursor
included) fits in `reply_budget_bytes(max_payload)`, and `PageBuilder.encode` checks the
real encoding against the budget. An event that alone exceeds the budget (archived under a
larger max_payload) is answered with its `data` replaced by a `truncated` marker so the
history still goes on.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from agentbus.contract.errors import AgentBusError
from agentbus.contract.messages import HISTORY_CURSOR_MAX_CHARS, AgentEvent, HistoryReply, encode

__all__ = [
    "CURSOR_VERSION",
    "REPLY_HEADROOM_BYTES",
    "CursorError",
    "HistoryKey",
    "PageBuilder",
    "decode_cursor",
    "encode_cursor",
    "fill_page",
    "reply_budget_bytes",
    "truncated",
]

CURSOR_VERSION: Final = "v1"
REPLY_HEADROOM_BYTES: Final = 4096
"""Kept free below max_payload (headers such as trace context, protocol framing)."""
DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""The server's default max_payload, for a connection that has not read the server's."""
_SIZE_SLACK_BYTES: Final = 64
"""For what varies between the measured and the sent envelope (`created_at` digits)."""
FETCH_ROWS: Final = 500
"""Rows read per store query while a page fills."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_RE: Final = re.compile(
    rf"{CURSOR_VERSION}\.(-?[0-9]{{1,19}})\.([0-9]{{1,19}})\.([A-Za-z0-9_-]{{1,128}})"
)
_LONGEST_CURSOR: Final = "x" * HISTORY_CURSOR_MAX_CHARS


class CursorError(AgentBusError, ValueError):
    """A `HistoryQuery.after` that is not a cursor of this archiver."""


class HistoryKey(NamedTuple):
    """The position of an event in its job's history (the sort key)."""

    ts: datetime
    stream_seq: int
    event_id: str


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def encode_cursor(key: HistoryKey) -> str:
    delta = _utc(key.ts) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    cursor = f"{CURSOR_VERSION}.{micros}.{key.stream_seq}.{key.event_id}"
    if not _CURSOR_RE.fullmatch(cursor):  # an event id or sequence the archive never stores
        raise CursorError(f"history.reply next: no cursor for the key {key!r}")
    return cursor


def decode_cursor(cursor: str) -> HistoryKey:
    """The key a cursor of `encode_cursor` stands for; `CursorError` names the field."""
    m = _CURSOR_RE.fullmatch(cursor)
    if m is None:
        raise CursorError(
            f"history.query after: {cursor[:64]!r} is not a history cursor "
            f"(send back the `next` of the previous history.reply)"
        )
    try:
        ts = _EPOCH + timedelta(microseconds=int(m.group(1)))
    except OverflowError as e:
        raise CursorError(f"history.query after: timestamp out of range in {cursor!r}") from e
    return HistoryKey(ts, int(m.group(2)), m.group(3))


def reply_budget_bytes(max_payload: int | None) -> int:
    """The largest reply to send on a connection whose server takes `max_payload` bytes."""
    limit = max_payload or DEFAULT_MAX_PAYLOAD_BYTES
    return limit - REPLY_HEADROOM_BYTES if limit > 4 * REPLY_HEADROOM_BYTES else limit // 2


def truncated(event: AgentEvent, *, data_bytes: int) -> AgentEvent:
    """`event` without its data (too large for any reply), saying how large it was."""
    marker = {"truncated": {"data_bytes": data_bytes, "reason": "larger than a history reply"}}
    return event.model_copy(update={"data": marker})


class PageBuilder:
    """The events of one `HistoryReply`, added while its encoding fits in `budget_bytes`."""

    def __init__(self, job_id: str, *, sender: str, budget_bytes: int) -> None:
        self.job_id = job_id
        self.sender = sender
        self.budget_bytes = budget_bytes
        longest = HistoryReply(job_id=job_id, next=_LONGEST_CURSOR)
        self._size = len(encode(longest, sender=sender)) + _SIZE_SLACK_BYTES
        if self._size > budget_bytes:
            raise ValueError(f"a history reply budget of {budget_bytes} bytes holds no event")
        self.events: list[AgentEvent] = []
        self.keys: list[HistoryKey] = []

    @property
    def size_bytes(self) -> int:
        """The encoded size of the reply so far (an upper bound)."""
        return self._size

    def add(self, key: HistoryKey, event: AgentEvent) -> bool:
        """Add `event` if the reply still fits; False (nothing added) when it is full. The
        first event always goes in: truncated if it cannot fit whole."""
        size = len(event.model_dump_json().encode()) + (1 if self.events else 0)
        if self._size + size > self.budget_bytes:
            if self.events:
                return False
            event = truncated(event, data_bytes=size)
            size = len(event.model_dump_json().encode())
            if self._size + size > self.budget_bytes:  # ids alone above the budget
                raise ValueError(f"event {event.event_id} does not fit in a history reply")
        self._size += size
        self.events.append(event)
        self.keys.append(key)
        return True

    def encode(self, *, more: bool) -> bytes:
        """The reply; `more`: events follow the last one added (the reply carries `next`).
        Never above the budget: if the real encoding were, the last events are left to the
        next page."""
        while True:
            last = self.keys[-1] if self.keys else None
            next_cursor = encode_cursor(last) if more and last is not None else None
            reply = HistoryReply(job_id=self.job_id, events=self.events, next=next_cursor)
            data = encode(reply, sender=self.sender)
            if len(data) <= self.budget_bytes or len(self.events) <= 1:
                return data
            self.events.pop()  # not reached while the size bound holds
            self.keys.pop()
            more = True


FetchPage = Callable[[HistoryKey | None, int], Awaitable[list[tuple[HistoryKey, AgentEvent]]]]
"""`(after, limit) -> [(key, event)]`: the store's `history_page` of one job."""


async def fill_page(
    fetch: FetchPage, page: PageBuilder, *, after: HistoryKey | None, limit: int
) -> bytes:
    """The encoded reply of the page after `after`: at most `limit` events, fewer when the
    byte budget is reached. Rows are read in slices of `FETCH_ROWS`, so a large `limit`
    with large events does not load rows that cannot fit. The reply carries `next` unless
    the history ended within it (then it holds fewer than `limit` events)."""
    while len(page.events) < limit:
        want = min(limit - len(page.events), FETCH_ROWS)
        rows = await fetch(after, want)
        for key, event in rows:
            if not page.add(key, event):
                return page.encode(more=True)  # full: the rest on the next page
            after = key
        if len(rows) < want:
            return page.encode(more=False)  # the job's history ends here
    return page.encode(more=True)  # `limit` events: a reply without `next` is never full
