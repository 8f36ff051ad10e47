"""Dead letters: list them, and replay them to where they came from.

A dead letter is a message a service gave up on: undecodable, rejected at intake, or a
task that failed on every allowed delivery (`Bus.dead_letter`). It sits on
`dlq.{stream}` in the DLQ stream with the original payload and headers, plus
`Agentbus-Dlq-*` headers: the reason, the stream, subject, sequence and `Nats-Msg-Id` it
had, and how often it was delivered. Its **ID** is its sequence number in the DLQ stream.

`replay` republishes the original payload and headers to the original subject with a new
`Nats-Msg-Id` (`{original id}:replay-{ID}`) and an `Agentbus-Replay-Of: {ID}` header, so
it is processed again as a new message (with a fresh delivery count), then deletes the
dead letter from the DLQ (unless `keep`). A replay that fails again is dead-lettered
again, under a new ID. Replaying the same ID twice within the stream's duplicate window
is a no-op (reported as `duplicate`) unless `force`.

What a replay does to the job:

- a **task** (`dlq.tasks`): the job was marked failed with the reason when the task was
  dead-lettered. The orchestrator keeps recording the results of a failed job's other
  tasks, so when the replayed task succeeds the job goes on from where it stopped
  (`failed` -> `reducing` -> `completed`, its error cleared). While a failed job still has
  a dead-lettered task that was not replayed, it stays `failed`.
- a **job** (`dlq.jobs`): a job that failed at intake (it never got past chunking) is
  taken in again from the start; a job that got further is left alone, and an
  undecodable job message is dead-lettered again.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from agentbus.contract import subjects
from agentbus.contract.errors import DeadLetterError
from agentbus.contract.headers import (
    DLQ_HEADER_DELIVERIES,
    DLQ_HEADER_MSG_ID,
    DLQ_HEADER_PREFIX,
    DLQ_HEADER_REASON,
    DLQ_HEADER_SEQ,
    DLQ_HEADER_STREAM,
    DLQ_HEADER_SUBJECT,
    MSG_ID_HEADER,
    REPLAY_OF_HEADER,
)
from agentbus.contract.messages import new_id

__all__ = [
    "DLQ_HEADER_PREFIX",
    "REPLAY_OF_HEADER",
    "DeadLetter",
    "DeadLetterError",
    "ReplayResult",
    "get_dead_letter",
    "is_replay",
    "list_dead_letters",
    "replay_dead_letter",
]

_TIMEOUT_S: Final = 5.0
_STREAM_NOT_FOUND: Final = 10059
"""JetStream's error code for a missing stream (as opposed to a missing message)."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    """Sequence number in the DLQ stream: what `agentbus dlq replay` takes."""
    subject: str
    """Where it is filed: `dlq.tasks`, `dlq.jobs`, ..."""
    stream: str
    """The stream it came from (TASKS, JOBS, ...)."""
    original_subject: str
    original_seq: int
    original_msg_id: str | None
    deliveries: int
    reason: str
    time: datetime | None
    headers: dict[str, str] = field(default_factory=dict)
    """The original headers (without the `Agentbus-Dlq-*` ones)."""
    data: bytes = b""
    """The original payload, byte for byte."""

    @property
    def job_id(self) -> str | None:
        return self._payload_field("job_id")

    @property
    def task_id(self) -> str | None:
        return self._payload_field("task_id")

    def _payload_field(self, name: str) -> str | None:
        """Best effort: the payload may be the very garbage that got it dead-lettered."""
        try:
            value = json.loads(self.data)["payload"][name]
        except (ValueError, TypeError, KeyError):
            return None
        return value if isinstance(value, str) else None

    @classmethod
    def from_message(
        cls,
        *,
        seq: int,
        subject: str,
        headers: dict[str, str] | None,
        data: bytes | None,
        time: datetime | None,
    ) -> DeadLetter:
        hdrs = dict(headers or {})

        def number(key: str) -> int:
            try:
                return int(hdrs.get(key, "0"))
            except ValueError:
                return 0

        return cls(
            id=seq,
            subject=subject,
            stream=hdrs.get(DLQ_HEADER_STREAM, subject.removeprefix("dlq.").upper()),
            original_subject=hdrs.get(DLQ_HEADER_SUBJECT, ""),
            original_seq=number(DLQ_HEADER_SEQ),
            original_msg_id=hdrs.get(DLQ_HEADER_MSG_ID) or None,
            deliveries=number(DLQ_HEADER_DELIVERIES),
            reason=hdrs.get(DLQ_HEADER_REASON, ""),
            time=time,
            headers={
                k: v
                for k, v in hdrs.items()
                if not k.startswith(DLQ_HEADER_PREFIX) and k != MSG_ID_HEADER
            },
            data=data or b"",
        )


def _filter(stream: str | None) -> str:
    return subjects.dlq_subject(stream) if stream else subjects.DLQ_SUBJECTS


async def get_dead_letter(js: JetStreamContext, dlq_id: int) -> DeadLetter:
    """The dead letter with this ID; `DeadLetterError` when there is none."""
    try:
        m = await js.get_msg(subjects.DLQ_STREAM, dlq_id)
    except nats.js.errors.NotFoundError as e:
        if e.err_code == _STREAM_NOT_FOUND:
            raise DeadLetterError(
                f"stream {subjects.DLQ_STREAM} not found: run `agentbus provision`"
            ) from e
        raise DeadLetterError(f"no dead letter {dlq_id} in stream {subjects.DLQ_STREAM}") from e
    except (nats.errors.Error, TimeoutError) as e:
        raise DeadLetterError(
            f"cannot read dead letter {dlq_id} from stream {subjects.DLQ_STREAM}: "
            f"{e or type(e).__name__}"
        ) from e
    return DeadLetter.from_message(
        seq=m.seq or dlq_id, subject=m.subject or "", headers=m.headers, data=m.data, time=m.time
    )


async def list_dead_letters(
    js: JetStreamContext, *, stream: str | None = None, limit: int = 1000
) -> list[DeadLetter]:
    """Dead letters, oldest first (at most `limit`); `stream` keeps those from one stream."""
    out: list[DeadLetter] = []
    try:
        info = await js.stream_info(subjects.DLQ_STREAM)
        seq = info.state.first_seq
        last = info.state.last_seq
        if info.state.messages == 0:
            return out
        while len(out) < limit and seq <= last:
            try:
                m = await js.get_msg(subjects.DLQ_STREAM, seq, subject=_filter(stream), next=True)
            except nats.js.errors.NotFoundError:
                break
            if m.seq is None:
                break
            out.append(
                DeadLetter.from_message(
                    seq=m.seq, subject=m.subject or "", headers=m.headers, data=m.data, time=m.time
                )
            )
            seq = m.seq + 1
    except nats.js.errors.NotFoundError as e:
        raise DeadLetterError(
            f"stream {subjects.DLQ_STREAM} not found: run `agentbus provision`"
        ) from e
    except (nats.errors.Error, TimeoutError) as e:
        raise DeadLetterError(
            f"cannot list stream {subjects.DLQ_STREAM}: {e or type(e).__name__}"
        ) from e
    return out


def is_replay(headers: dict[str, str] | None) -> bool:
    """True for a message that `replay_dead_letter` put back."""
    return bool(headers and headers.get(REPLAY_OF_HEADER))


@dataclass(frozen=True)
class ReplayResult:
    dead_letter: DeadLetter
    msg_id: str
    stream: str
    seq: int
    """Sequence of the replayed message in the stream it went back to."""
    duplicate: bool
    """True when this replay had already been published (nothing new was sent)."""
    removed: bool
    """True when the dead letter was deleted from the DLQ."""


async def replay_dead_letter(
    js: JetStreamContext, dlq_id: int, *, keep: bool = False, force: bool = False
) -> ReplayResult:
    """Republish dead letter `dlq_id` to its original subject (see the module docstring)."""
    dead = await get_dead_letter(js, dlq_id)
    if not dead.original_subject:
        raise DeadLetterError(f"dead letter {dlq_id} does not name its original subject")
    msg_id = f"{dead.original_msg_id or dead.stream.lower()}:replay-{dlq_id}"
    if force:
        msg_id += f"-{new_id()[:12]}"
    headers = {**dead.headers, MSG_ID_HEADER: msg_id, REPLAY_OF_HEADER: str(dlq_id)}
    try:
        ack = await js.publish(
            dead.original_subject, dead.data, headers=headers, timeout=_TIMEOUT_S
        )
    except nats.errors.NoRespondersError as e:
        raise DeadLetterError(
            f"replay of dead letter {dlq_id}: no stream takes {dead.original_subject}"
        ) from e
    except (nats.errors.Error, TimeoutError) as e:
        raise DeadLetterError(
            f"replay of dead letter {dlq_id} to {dead.original_subject} failed: "
            f"{e or type(e).__name__}"
        ) from e
    removed = False
    if not keep:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            try:
                removed = bool(await js.delete_msg(subjects.DLQ_STREAM, dlq_id))
            except (nats.errors.Error, TimeoutError) as e:
                raise DeadLetterError(
                    f"dead letter {dlq_id} was replayed (to {ack.stream} seq {ack.seq}) but not "
                    f"removed from {subjects.DLQ_STREAM}: {e or type(e).__name__}; "
                    "replaying it again is a no-op within the duplicate window"
                ) from e
    return ReplayResult(
        dead_letter=dead,
        msg_id=msg_id,
        stream=ack.stream,
        seq=ack.seq,
        duplicate=bool(ack.duplicate),
        removed=removed,
    )
