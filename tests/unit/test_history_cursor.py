"""Paging of `rpc.history` where it is pure: the cursor, the byte budget of a reply, the
page-filling loop over an in-memory history, and the wire compatibility of the new fields."""

from __future__ import annotations

import bisect
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import (
    HISTORY_CURSOR_MAX_CHARS,
    AgentEvent,
    EventKind,
    HistoryQuery,
    HistoryReply,
    Payload,
    decode,
    encode,
)
from agentbus_event_archiver.paging import (
    REPLY_HEADROOM_BYTES,
    CursorError,
    HistoryKey,
    PageBuilder,
    decode_cursor,
    encode_cursor,
    fill_page,
    reply_budget_bytes,
)

pytestmark = pytest.mark.unit

TOKENS = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
TIMES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)
KEYS = st.builds(HistoryKey, TIMES, st.integers(min_value=0, max_value=2**63 - 1), TOKENS)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
UPPER_BOUND_SLACK_BYTES = HISTORY_CURSOR_MAX_CHARS + 128
"""What the page size bound may overestimate: the longest cursor, `created_at` digits."""


def ev(i: int, *, data_chars: int = 10, ts: datetime = T0) -> AgentEvent:
    return AgentEvent(
        event_id=f"ev-{i:06d}",
        agent_id="worker-1",
        service="worker",
        kind=EventKind.TASK_COMPLETED,
        job_id="job-1",
        data={"i": i, "text": "é" * data_chars},
        ts=ts,
    )


@given(KEYS)
def test_a_cursor_stands_for_its_key(key: HistoryKey) -> None:
    cursor = encode_cursor(key)
    assert len(cursor) <= HISTORY_CURSOR_MAX_CHARS
    assert decode_cursor(cursor) == key
    assert HistoryQuery(job_id="j", after=cursor).after == cursor  # the contract takes it


def test_a_naive_timestamp_is_utc_in_a_cursor() -> None:
    naive = HistoryKey(datetime(2025, 6, 1, 12, 0, 0, 7), 3, "e")
    assert decode_cursor(encode_cursor(naive)) == naive._replace(ts=naive.ts.replace(tzinfo=UTC))
    assert encode_cursor(HistoryKey(T0, 5, "ev-1")) == "v1.1735689600000000.5.ev-1"


@pytest.mark.parametrize(
    "cursor",
    ["", "v1", "v2.1.2.e", "v1.1.2.e.f", "v1.x.2.e", "v1.1.-2.e", "v1.1.2.", "v1.1.2.a b",
     "v1.9999999999999999999.1.e", " v1.1.2.e"],
)  # fmt: skip
def test_anything_else_is_refused_naming_the_field(cursor: str) -> None:
    with pytest.raises(CursorError, match=r"^history\.query after: "):
        decode_cursor(cursor)


def test_the_budget_leaves_headroom_below_max_payload() -> None:
    assert reply_budget_bytes(1024 * 1024) == 1024 * 1024 - REPLY_HEADROOM_BYTES
    assert reply_budget_bytes(256 * 1024) == 256 * 1024 - REPLY_HEADROOM_BYTES
    assert reply_budget_bytes(None) == reply_budget_bytes(0) == reply_budget_bytes(1024 * 1024)
    assert reply_budget_bytes(8192) == 4096


class MemoryHistory:
    """A job's history sorted by key, read the way the store reads it (keyset)."""

    def __init__(self, events: list[AgentEvent], seqs: list[int]) -> None:
        rows = [(HistoryKey(e.ts, s, e.event_id), e) for e, s in zip(events, seqs, strict=True)]
        self.rows = sorted(rows, key=lambda r: r[0])
        self.keys = [k for k, _ in self.rows]
        self.fetches = 0

    async def fetch(
        self, after: HistoryKey | None, limit: int
    ) -> list[tuple[HistoryKey, AgentEvent]]:
        self.fetches += 1
        start = 0 if after is None else bisect.bisect_right(self.keys, after)
        return self.rows[start : start + limit]


async def walk(history: MemoryHistory, *, budget: int, limit: int) -> list[HistoryReply]:
    """Every page of the history, as a client reads them; checks each reply's size."""
    pages: list[HistoryReply] = []
    after: str | None = None
    while True:
        page = PageBuilder("job-1", sender="arch-1", budget_bytes=budget)
        data = await fill_page(
            history.fetch, page, after=decode_cursor(after) if after else None, limit=limit
        )
        assert len(data) <= budget
        reply = decode(data, HistoryReply).payload
        pages.append(reply)
        assert len(reply.events) <= limit
        if reply.next is None:
            assert len(reply.events) < limit  # a page without a cursor is never full
            return pages
        assert reply.next != after
        after = reply.next


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=6000), min_size=0, max_size=120),
    tied=st.integers(min_value=1, max_value=40),
    budget=st.integers(min_value=4096, max_value=40_000),
    limit=st.integers(min_value=1, max_value=50),
)
async def test_pages_hold_every_event_once_in_order_within_the_budget(
    sizes: list[int], tied: int, budget: int, limit: int
) -> None:
    # runs of `tied` events share a timestamp and a stream sequence (one batch message)
    events = [ev(i, data_chars=n, ts=T0 + timedelta(seconds=i // tied)) for i, n in
              enumerate(sizes)]  # fmt: skip
    history = MemoryHistory(events, [i // tied for i in range(len(events))])
    pages = await walk(history, budget=budget, limit=limit)
    got = [e for p in pages for e in p.events]
    assert [e.event_id for e in got] == [e.event_id for _k, e in history.rows]
    for e in got:  # whole, or truncated only when it could never fit alone
        original = events[int(e.event_id[3:])]
        if e.data != original.data:
            assert e.data["truncated"]["data_bytes"] > budget // 2
    for p, following in itertools.pairwise(pages):
        if len(p.events) < limit and following.events:  # cut by bytes: with reason
            cut = events[int(following.events[0].event_id[3:])]  # as stored, not truncated
            room = len(encode(p, sender="arch-1")) + len(cut.model_dump_json().encode())
            assert room > budget - UPPER_BOUND_SLACK_BYTES


async def test_thousands_of_tied_events_page_without_gaps() -> None:
    events = [ev(i) for i in range(3000)]  # all at the same instant
    history = MemoryHistory(events, [i // 250 for i in range(3000)])
    pages = await walk(history, budget=1024 * 1024, limit=137)
    got = [e.event_id for p in pages for e in p.events]
    assert got == [e.event_id for e in events] and len(set(got)) == 3000
    assert len(pages) == 3000 // 137 + 1


async def test_a_page_is_cut_by_bytes_and_reads_no_more_rows_than_needed() -> None:
    events = [ev(i, data_chars=1000) for i in range(2000)]  # ~2 KB each, encoded
    history = MemoryHistory(events, list(range(2000)))
    budget = 64 * 1024
    page = PageBuilder("job-1", sender="arch-1", budget_bytes=budget)
    data = await fill_page(history.fetch, page, after=None, limit=10_000)
    reply = decode(data, HistoryReply).payload
    assert 25 <= len(reply.events) <= 32 and budget - 2100 < len(data) <= budget
    assert reply.next == encode_cursor(history.keys[len(reply.events) - 1])
    assert history.fetches == 1  # one slice of FETCH_ROWS, not ten thousand rows


async def test_an_event_larger_than_any_reply_is_sent_truncated() -> None:
    events = [ev(0), ev(1, data_chars=20_000), ev(2)]
    history = MemoryHistory(events, [1, 2, 3])
    pages = await walk(history, budget=8192, limit=10)
    got = [e for p in pages for e in p.events]
    assert [e.event_id for e in got] == ["ev-000000", "ev-000001", "ev-000002"]
    assert got[0].data == events[0].data and got[2].data == events[2].data
    marker = got[1].data["truncated"]
    assert marker["data_bytes"] > 40_000 and "larger than a history reply" in marker["reason"]
    assert got[1].kind is EventKind.TASK_COMPLETED and got[1].ts == T0


async def test_an_empty_or_unknown_history_is_one_page_without_cursor() -> None:
    pages = await walk(MemoryHistory([], []), budget=4096, limit=500)
    assert len(pages) == 1 and pages[0].events == [] and pages[0].next is None


async def test_a_page_of_exactly_limit_events_carries_a_cursor() -> None:
    history = MemoryHistory([ev(i) for i in range(10)], list(range(10)))
    pages = await walk(history, budget=1024 * 1024, limit=5)
    assert [len(p.events) for p in pages] == [5, 5, 0]


def test_a_budget_too_small_for_the_envelope_is_refused() -> None:
    with pytest.raises(ValueError, match="budget of 100 bytes holds no event"):
        PageBuilder("job-1", sender="arch-1", budget_bytes=100)


# --- wire compatibility with the previous release (no cursor fields, extra="forbid") ----


class OldHistoryQuery(Payload):
    MSG_TYPE: ClassVar[str] = "history.query"
    job_id: str
    limit: int = 10_000


class OldHistoryReply(Payload):
    MSG_TYPE: ClassVar[str] = "history.reply"
    job_id: str
    events: list[AgentEvent] = []
    error: str | None = None


def test_unset_cursors_stay_off_the_wire_for_readers_of_the_previous_release() -> None:
    first = encode(HistoryQuery(job_id="j"), sender="c")
    assert "after" not in json.loads(first)["payload"]
    assert decode(first, OldHistoryQuery).payload.limit == 500  # an old archiver reads it
    last = encode(HistoryReply(job_id="j", events=[ev(1)]), sender="a")
    assert decode(last, OldHistoryReply).payload.events == [ev(1)]  # an old client reads it
    more = encode(HistoryReply(job_id="j", events=[ev(1)], next="v1.1.1.e"), sender="a")
    with pytest.raises(MessageDecodeError, match="next"):  # refused, never read as complete
        decode(more, OldHistoryReply)
    # a query of the previous release is the first page
    old = decode(encode(OldHistoryQuery(job_id="j"), sender="c"), HistoryQuery).payload
    assert old.after is None and old.limit == 10_000
