"""Message models: round trips, envelope shape, and one clear error per bad message."""

from __future__ import annotations

import json

import pytest

from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    AgentEvent,
    EventKind,
    JobState,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
    decode,
    decode_job_state,
    encode,
)

pytestmark = pytest.mark.unit


def test_envelope_keeps_the_seed_shape() -> None:
    job = JobSubmit(job_id="job-1", text="hello world", title="t")
    raw = json.loads(encode(job, sender="client-1", msg_id="m1"))
    assert raw["sender"] == "client-1"
    assert raw["msg_type"] == "job.submit"
    assert raw["payload"]["job_id"] == "job-1"
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["id"] == "m1"
    assert "created_at" in raw


@pytest.mark.parametrize(
    "payload",
    [
        JobSubmit(job_id="j", text="x", summary_chars=100),
        TaskAssign(job_id="j", task_id="0-1", level=0, index=1, count=3, text="abc", max_chars=50),
        TaskResult(
            job_id="j",
            task_id="0-1",
            level=0,
            index=1,
            ok=True,
            summary="s",
            worker_id="w",
            duration_ms=1.5,
        ),
        AgentEvent(event_id="e1", agent_id="a", service="worker", kind=EventKind.TASK_STARTED),
    ],
)
def test_round_trip(payload: JobSubmit) -> None:
    env = decode(encode(payload, sender="s"), type(payload))
    assert env.payload == payload
    assert env.msg_type == payload.MSG_TYPE


def test_every_message_type_is_registered_once() -> None:
    assert len(MESSAGE_TYPES) == len({m.__name__ for m in MESSAGE_TYPES.values()})
    assert MESSAGE_TYPES["task.assign"] is TaskAssign


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "invalid job.submit"),
        (b"{}", "invalid job.submit"),
        (b'{"sender":"s","msg_type":"job.submit","payload":{"job_id":"a.b.c"}}', "payload.job_id"),
        (b'{"sender":"s","msg_type":"job.submit","payload":{"job_id":"ok","x":1}}', "payload.x"),
        (b'{"sender":"s","msg_type":"task.assign","payload":{"job_id":"ok"}}', "task.assign"),
        (
            b'{"sender":"s","msg_type":"job.submit","schema_version":99,"payload":{"job_id":"a"}}',
            "newer than supported",
        ),
        (b"\xff\xfe", "invalid job.submit"),
    ],
)
def test_bad_messages_raise_one_clear_error(data: bytes, fragment: str) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode(data, JobSubmit)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_size_cap_is_checked_before_parsing() -> None:
    big = encode(JobSubmit(job_id="j", text="x" * 5000), sender="s")
    with pytest.raises(MessageDecodeError, match="exceeds the cap of 1000"):
        decode(big, JobSubmit, max_bytes=1000)


def test_subject_tokens_cannot_be_smuggled_through_ids() -> None:
    for bad in ("a.b.c", ".a", "a b", "a>", "*", "", "x" * 200, "a\r\nb"):
        with pytest.raises(MessageDecodeError):
            decode(
                json.dumps(
                    {"sender": "s", "msg_type": "job.submit", "payload": {"job_id": bad}}
                ).encode(),
                JobSubmit,
            )


def test_job_state_progress_and_terminal() -> None:
    s = JobState(job_id="j", status=JobStatus.RUNNING, chunks=4, level_tasks=4, level_done=[0, 1])
    assert 0 < s.progress < 1
    assert not s.status.terminal
    done = s.model_copy(update={"status": JobStatus.COMPLETED})
    assert done.progress == 1.0 and done.status.terminal
    assert decode_job_state(done.model_dump_json().encode()) == done
    with pytest.raises(MessageDecodeError, match="invalid job state"):
        decode_job_state(b'{"job_id": "j"}')
