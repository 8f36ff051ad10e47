"""Group commit of events (agentbus.emitter) against a recording publisher, and the two
wire forms it produces (one `AgentEvent`, or an `AgentEventBatch`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentbus.bus.emitter import EventEmitter
from agentbus.bus.headers import delivery_count, stored_at_s
from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import (
    AgentEvent,
    AgentEventBatch,
    EventKind,
    decode,
    decode_events,
    encode,
)
from agentbus.observability import telemetry

pytestmark = pytest.mark.unit


def _event(i: int, **data: Any) -> AgentEvent:
    return AgentEvent(
        event_id=f"ev-{i}", agent_id="a-1", service="orchestrator",
        kind=EventKind.JOB_ACCEPTED, job_id=f"job-{i}", data=data,
    )  # fmt: skip


class Recorder:
    """A `Bus.publish_raw` stand-in: records each publish, optionally slow or failing."""

    def __init__(self, *, delay_s: float = 0.0, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(self, subject: str, data: bytes, **kw: Any) -> None:
        self.calls.append({"subject": subject, "data": data, **kw})
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail

    def events(self) -> list[list[str]]:
        return [[e.event_id for e in decode_events(c["data"])[1]] for c in self.calls]


def _emitter(rec: Recorder, **kw: Any) -> EventEmitter:
    return EventEmitter(rec, sender="a-1", service="test", stream="AGENT_EVENTS", **kw)


async def test_a_lone_event_is_a_plain_event_with_its_own_id() -> None:
    rec = Recorder()
    await _emitter(rec).enqueue("agent.a-1.events", _event(1, chars=10))
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert call["msg_id"] == "ev-1" and call["stream"] == "AGENT_EVENTS"
    env = decode(call["data"], AgentEvent)
    assert env.id == "ev-1" and env.payload.data == {"chars": 10}


async def test_concurrent_emits_share_one_message_in_order() -> None:
    rec = Recorder()
    em = _emitter(rec)
    await asyncio.gather(*(em.enqueue("agent.a-1.events", _event(i)) for i in range(10)))
    assert rec.events() == [[f"ev-{i}" for i in range(10)]]
    env, _ = decode_events(rec.calls[0]["data"])
    assert env.msg_type == AgentEventBatch.MSG_TYPE
    assert rec.calls[0]["msg_id"].startswith("batch-") and rec.calls[0]["msg_id"] == env.id


async def test_events_emitted_during_a_publish_go_in_the_next_one() -> None:
    rec = Recorder(delay_s=0.05)
    em = _emitter(rec)
    first = em.enqueue("agent.a-1.events", _event(0))
    await asyncio.sleep(0.01)  # the first publish is in flight
    rest = [em.enqueue("agent.a-1.events", _event(i)) for i in (1, 2, 3)]
    await asyncio.gather(first, *rest)
    assert rec.events() == [["ev-0"], ["ev-1", "ev-2", "ev-3"]]


async def test_subjects_are_never_mixed_and_caps_hold() -> None:
    rec = Recorder()
    em = _emitter(rec, max_events_per_message=4)
    await asyncio.gather(
        *(em.enqueue("agent.a-1.events", _event(i)) for i in range(10)),
        *(em.enqueue("agent.a-1.results", _event(100 + i)) for i in range(3)),
    )
    by_subject: dict[str, list[list[str]]] = {}
    for call, ids in zip(rec.calls, rec.events(), strict=True):
        by_subject.setdefault(call["subject"], []).append(ids)
    assert [len(ids) for ids in by_subject["agent.a-1.events"]] == [4, 4, 2]
    assert [i for ids in by_subject["agent.a-1.events"] for i in ids] == [
        f"ev-{i}" for i in range(10)
    ]
    assert by_subject["agent.a-1.results"] == [["ev-100", "ev-101", "ev-102"]]


async def test_a_batch_above_the_byte_cap_is_split() -> None:
    rec = Recorder()
    em = _emitter(rec, max_message_bytes=4000)
    await asyncio.gather(
        *(em.enqueue("agent.a-1.events", _event(i, pad="x" * 400)) for i in range(20))
    )
    assert all(len(c["data"]) <= 4000 for c in rec.calls)
    assert len(rec.calls) > 2
    assert [i for ids in rec.events() for i in ids] == [f"ev-{i}" for i in range(20)]


async def test_one_event_per_message_when_asked() -> None:
    rec = Recorder()
    em = _emitter(rec, max_events_per_message=1)
    await asyncio.gather(*(em.enqueue("agent.a-1.events", _event(i)) for i in range(3)))
    assert rec.events() == [["ev-0"], ["ev-1"], ["ev-2"]]
    assert [c["msg_id"] for c in rec.calls] == ["ev-0", "ev-1", "ev-2"]


async def test_a_failed_publish_fails_every_emit_in_it_and_the_next_one_goes_on() -> None:
    rec = Recorder(fail=RuntimeError("stream down"))
    em = _emitter(rec)
    outcomes = await asyncio.gather(
        *(em.enqueue("agent.a-1.events", _event(i)) for i in range(3)), return_exceptions=True
    )
    assert [str(o) for o in outcomes] == ["stream down"] * 3
    rec.fail = None
    await em.enqueue("agent.a-1.events", _event(9))
    assert rec.events()[-1] == ["ev-9"]


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    rec = Recorder(delay_s=0.05)
    em = _emitter(rec)
    tasks = [em.enqueue("agent.a-1.events", _event(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError) and done[1:] == [None, None]
    assert rec.events() == [["ev-0", "ev-1", "ev-2"]]  # already in flight: published
    await em.close()


async def test_each_batched_event_carries_its_own_trace_context(
    memory_spans: Any,
) -> None:
    rec = Recorder()
    em = _emitter(rec)

    async def in_span(i: int) -> str:
        with telemetry.span(f"step {i}"):
            await em.enqueue("agent.a-1.events", _event(i))
            return str(telemetry.current_span_id())

    span_ids = await asyncio.gather(*(in_span(i) for i in range(3)))
    _env, events = decode_events(rec.calls[0]["data"])
    assert [e.traceparent.split("-")[2] for e in events if e.traceparent] == span_ids


def test_decode_events_reads_both_forms_and_is_not_fooled_by_the_mark() -> None:
    tricky = _event(1, note='"msg_type":"agent.event_batch"')
    env, events = decode_events(encode(tricky, sender="a-1"))
    assert env.msg_type == AgentEvent.MSG_TYPE and events == [tricky]
    batch = AgentEventBatch(events=[_event(2), tricky])
    _env, events = decode_events(encode(batch, sender="a-1"))
    assert [e.event_id for e in events] == ["ev-2", "ev-1"]
    with pytest.raises(MessageDecodeError, match=r"invalid agent\.event"):
        decode_events(b'{"not": "an event"}')
    empty = json.loads(encode(batch, sender="a-1"))
    empty["payload"]["events"] = []
    with pytest.raises(MessageDecodeError):
        decode_events(json.dumps(empty).encode())


class _Reply:
    def __init__(self, reply: str) -> None:
        self.reply = reply


@pytest.mark.parametrize(
    ("reply", "count"),
    [
        ("$JS.ACK.TASKS.summarize-workers.3.120.99.1732500000000000000.7", 3),
        ("$JS.ACK.hub.ACCHASH.TASKS.summarize-workers.5.120.99.1732500000000000000.7.tok", 5),
        ("$JS.ACK.hub.ACCHASH.TASKS.summarize-workers.2.120.99.1732500000000000000.7", 2),
        ("_INBOX.abc", 1),
        ("", 1),
        ("$JS.ACK.TASKS.summarize-workers.x.120.99.1.7", 1),
    ],
)
def test_delivery_count_from_the_ack_subject(reply: str, count: int) -> None:
    assert delivery_count(_Reply(reply)) == count  # type: ignore[arg-type]  # a stand-in with only `.reply`


@pytest.mark.parametrize(
    ("reply", "stored"),
    [
        ("$JS.ACK.TASKS.summarize-workers.3.120.99.1732500000000000000.7", 1732500000.0),
        (
            "$JS.ACK.hub.ACCHASH.TASKS.summarize-workers.5.120.99.1732500000500000000.7.tok",
            1732500000.5,
        ),
        ("_INBOX.abc", None),
        ("", None),
        ("$JS.ACK.TASKS.summarize-workers.3.120.99.x.7", None),
    ],
)
def test_stored_time_from_the_ack_subject(reply: str, stored: float | None) -> None:
    assert stored_at_s(_Reply(reply)) == stored  # type: ignore[arg-type]  # a stand-in with only `.reply`
