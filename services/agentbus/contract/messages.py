"""Message models of the wire contract (pydantic v2).

Every message on a subject is an `Envelope` in the seed article's shape (`sender`,
`msg_type`, `payload`) plus `id`, `schema_version` and `created_at`. The payload model
decides `msg_type`. Job state in the jobs KV bucket is a `JobState` (no envelope).
"""

from __future__ import annotations

import base64
import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from agentbus.contract.errors import MessageDecodeError
from agentbus.contract.priority import Priority

__all__ = [
    "HARD_MAX_MESSAGE_BYTES",
    "HISTORY_CURSOR_MAX_CHARS",
    "HISTORY_PAGE_EVENTS",
    "MAX_EVENTS_PER_BATCH",
    "MAX_EVENT_DATA_DEPTH",
    "MAX_HISTORY_PAGE_EVENTS",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "AgentEvent",
    "AgentEventBatch",
    "CancelReply",
    "CancelRequest",
    "Command",
    "CommandReply",
    "DocumentRef",
    "Envelope",
    "EventKind",
    "HistoryQuery",
    "HistoryReply",
    "JobCanceled",
    "JobState",
    "JobStatus",
    "JobSubmit",
    "Payload",
    "StreamItem",
    "StreamKind",
    "SummarizeReply",
    "SummarizeRequest",
    "TaskAssign",
    "TaskResult",
    "TokenUsage",
    "decode",
    "decode_events",
    "decode_job_state",
    "encode",
    "new_id",
    "utcnow",
]

SCHEMA_VERSION: Final = 1
HARD_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""No decoder reads more than this (NATS's own payload ceiling), whatever the caller asks."""
MAX_EVENT_DATA_DEPTH: Final = 16
"""Nesting depth allowed in an event's free-form `data`."""

MAX_EVENTS_PER_BATCH: Final = 10_000
MAX_LEGACY_TASK_INDEX: Final = 8 * 1024 * 1024
"""A task index a legacy job state (`level_done` as a list) may name: its bitmap then stays
within 1 MiB. A larger one is refused, not allocated (a hostile value of 2**40 would ask
for a 128 GiB bitmap)."""
"""Events one `AgentEventBatch` may hold."""

HISTORY_PAGE_EVENTS: Final = 500
"""Events a `HistoryQuery` asks for per page unless it says otherwise."""
MAX_HISTORY_PAGE_EVENTS: Final = 10_000
"""Events the archiver puts in one `HistoryReply` at most, whatever the query's `limit`."""
HISTORY_CURSOR_MAX_CHARS: Final = 256

Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
JobId = Annotated[
    str,
    StringConstraints(pattern=r"^(?:[A-Za-z0-9_-]{1,128}\.)?[A-Za-z0-9_-]{1,128}$", max_length=128),
]
"""`{id}`, or `{tenant}.{id}` for a tenant's job (`agentbus.contract.subjects.check_job_id`)."""
TraceHeader = Annotated[str, StringConstraints(max_length=512)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
SEAL_PATTERN: Final = r"^[A-Za-z0-9_-]{59}=$"
"""A `DocumentRef.seal`: 32 key bytes and 12 nonce bytes, base64url."""
SEAL_TAG_BYTES: Final = 16
"""What sealing adds to an object (the GCM tag)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Payload(BaseModel):
    """Base of every payload; `MSG_TYPE` is its `msg_type` on the wire."""

    # no Infinity/NaN: they are not JSON, and would not survive the archive or a round trip
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    MSG_TYPE: ClassVar[str] = ""
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()
    """Fields added after a release, left out of the wire form while unset: a reader of
    the previous release (`extra="forbid"`) still decodes the message."""


class DocumentRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bucket: Token
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    size_bytes: int = Field(ge=0)
    """Of the document itself (a sealed object is `SEAL_TAG_BYTES` longer)."""
    sha256: Sha256Hex
    seal: Annotated[str, StringConstraints(pattern=SEAL_PATTERN)] | None = None
    """The AES-256-GCM key and nonce (base64url, 44 bytes) the object is sealed with
    (`agentbus.bus.documents`): every tenant's client may use the shared object store,
    and only the job's message and state (which the server lets only the job's tenant
    read) carry the key. None: stored
    in the clear (a client of an earlier release)."""


class JobSubmit(Payload):
    MSG_TYPE: ClassVar[str] = "job.submit"
    job_id: JobId
    skill: Token = "summarize"
    text: str | None = None
    document: DocumentRef | None = None
    summary_chars: int | None = Field(default=None, ge=50, le=1_000_000)
    title: Annotated[str, StringConstraints(max_length=512)] = ""
    document_sha256: Sha256Hex | None = None
    """SHA-256 of the document's bytes: a job id submitted again must carry the same."""
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    """Deadline of this job in seconds from its acceptance (default: the orchestrator's)."""
    priority: Priority | None = None
    """high, normal (None: the default) or low; kept by every task of the job."""
    tenant: Token | None = None
    """The tenant a trusted client submits for, on `jobs.submit` (None: `default`); on
    `jobs.submit.{tenant}` the subject's tenant wins (`agentbus.contract.tenants`)."""
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"priority", "tenant"})


class TaskAssign(Payload):
    MSG_TYPE: ClassVar[str] = "task.assign"
    job_id: JobId
    task_id: Token
    level: int = Field(ge=0, le=64)
    """0 = map step over document chunks; 1+ = reduce steps over summaries."""
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    text: Annotated[str, StringConstraints(min_length=1)]
    max_chars: int = Field(ge=20)
    priority: Priority | None = None
    """The job's priority (None: normal); the subject says it too."""
    tenant: Token | None = None
    """The job's tenant (None: `default`); the subject says it too."""
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"priority", "tenant"})


class TokenUsage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TaskResult(Payload):
    MSG_TYPE: ClassVar[str] = "task.result"
    job_id: JobId
    task_id: Token
    level: int = Field(ge=0, le=64)
    index: int = Field(ge=0)
    ok: bool
    summary: str = ""
    error: str | None = None
    worker_id: Token
    duration_ms: float = Field(ge=0)
    usage: TokenUsage | None = None
    tenant: Token | None = None
    """The task's tenant (None: `default`)."""
    tokens: int | None = Field(default=None, ge=0)
    """Tokens counted against the tenant's budget: the backend's usage (prompt +
    completion), or an estimate (characters / 4) for a backend that reports none."""
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"tenant", "tokens"})


class StreamKind(StrEnum):
    """What a job's live partial result (`progress.{job_id}`) says."""

    STARTED = "started"
    """The job is chunked: `count` chunks (a job of more than one chunk)."""
    CHUNK = "chunk"
    """One task's summary as it completes (`level`, `index` of `count`)."""
    DELTA = "delta"
    """Tokens of a summary still being written (`level`, `index`), when the backend
    streams; consecutive deltas of one task concatenate to its text."""
    REDUCE = "reduce"
    """A reduce level starts: `level`, `count` tasks."""
    COMPLETED = "completed"
    """The final summary (`text`, or `summary_ref` above the inline limit). The last item."""
    FAILED = "failed"
    """The job failed (`error`). The last item."""
    CANCELED = "canceled"
    """The job was canceled (`error`: the reason given, if any). The last item."""

    @property
    def final(self) -> bool:
        return self in (StreamKind.COMPLETED, StreamKind.FAILED, StreamKind.CANCELED)


class StreamItem(Payload):
    """One live partial result of a job, on `progress.{job_id}` (see `StreamKind`)."""

    MSG_TYPE: ClassVar[str] = "job.stream"
    job_id: JobId
    kind: StreamKind
    level: int = Field(default=0, ge=0, le=64)
    index: int | None = Field(default=None, ge=0)
    count: int | None = Field(default=None, ge=0)
    text: str = ""
    summary_ref: DocumentRef | None = None
    error: str | None = None
    worker_id: Token | None = None
    restart: bool = False
    """On a delta: the text of this task so far is dropped (the backend retried)."""
    ts: datetime = Field(default_factory=utcnow)


class EventKind(StrEnum):
    JOB_ACCEPTED = "job.accepted"
    JOB_CHUNKED = "job.chunked"
    JOB_REDUCING = "job.reducing"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELED = "job.canceled"
    TASK_STARTED = "task.started"
    TASK_COMPLETED = "task.completed"
    TASK_RETRIED = "task.retried"
    TASK_DEAD_LETTERED = "task.dead_lettered"
    TASK_CANCELED = "task.canceled"
    MESSAGE_REJECTED = "message.rejected"
    AGENT_STARTED = "agent.started"
    AGENT_STOPPED = "agent.stopped"


def _clean(value: object, depth: int) -> object:
    """A JSON value with NUL characters replaced (PostgreSQL's JSON refuses them); raises
    ValueError past `MAX_EVENT_DATA_DEPTH` levels or on a non-finite number (not JSON)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("holds a non-finite number")
    if isinstance(value, dict | list):
        if depth >= MAX_EVENT_DATA_DEPTH:
            raise ValueError(f"nested deeper than {MAX_EVENT_DATA_DEPTH} levels")
        if isinstance(value, list):
            return [_clean(v, depth + 1) for v in value]
        return {str(_clean(k, depth)): _clean(v, depth + 1) for k, v in value.items()}
    return value


def _clean_data(value: dict[str, Any]) -> dict[str, Any]:
    cleaned = _clean(value, 0)
    assert isinstance(cleaned, dict)
    return cleaned


class AgentEvent(Payload):
    MSG_TYPE: ClassVar[str] = "agent.event"
    event_id: JobId  # often derived from the job id (a tenant's has one dot)
    agent_id: Token
    service: Token
    kind: EventKind
    job_id: JobId | None = None
    task_id: Token | None = None
    data: Annotated[dict[str, Any], AfterValidator(_clean_data)] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=utcnow)
    traceparent: TraceHeader | None = None
    """W3C trace context of the step, inside an `AgentEventBatch` (a single event carries
    it in the message headers instead)."""
    tracestate: TraceHeader | None = None


class AgentEventBatch(Payload):
    """Events emitted side by side, published as one message (group commit)."""

    MSG_TYPE: ClassVar[str] = "agent.event_batch"
    events: list[AgentEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


HistoryCursor = Annotated[str, StringConstraints(min_length=1, max_length=HISTORY_CURSOR_MAX_CHARS)]
"""Opaque: where a page of history ended; only the archiver reads it."""


class HistoryQuery(Payload):
    """One page of a job's archived events, oldest first, after the cursor `after` (from
    the start without it). The reply holds at most `limit` events (and at most
    `MAX_HISTORY_PAGE_EVENTS`), fewer when more would not fit in one message."""

    MSG_TYPE: ClassVar[str] = "history.query"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"after"})
    job_id: JobId
    limit: int = Field(default=HISTORY_PAGE_EVENTS, ge=1, le=100_000)
    after: HistoryCursor | None = None


class HistoryReply(Payload):
    """A page of events; `next` is the cursor of the following page, None (absent) on the
    last one. A page without `next` is never full: it holds fewer than `limit` events."""

    MSG_TYPE: ClassVar[str] = "history.reply"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"next"})
    job_id: JobId
    events: list[AgentEvent] = Field(default_factory=list)
    error: str | None = None
    next: HistoryCursor | None = None


class SummarizeRequest(Payload):
    MSG_TYPE: ClassVar[str] = "summarize.request"
    text: Annotated[str, StringConstraints(min_length=1)]
    max_chars: int = Field(default=1200, ge=20)


class SummarizeReply(Payload):
    MSG_TYPE: ClassVar[str] = "summarize.reply"
    ok: bool
    summary: str = ""
    error: str | None = None
    worker_id: Token


class Command(Payload):
    MSG_TYPE: ClassVar[str] = "agent.command"
    command: Literal["ping", "pause", "resume", "drain"]


class CommandReply(Payload):
    MSG_TYPE: ClassVar[str] = "agent.command_reply"
    agent_id: Token
    service: Token
    ok: bool
    state: str
    detail: str = ""


CancelReason = Annotated[str, StringConstraints(max_length=512)]


class CancelRequest(Payload):
    """Cancel a job (`jobs.cancel`, answered by one orchestrator replica). Idempotent."""

    MSG_TYPE: ClassVar[str] = "job.cancel"
    job_id: JobId
    reason: CancelReason = ""


class CancelReply(Payload):
    """What a cancel did: `canceled` is True only for the call that canceled the job; a
    job already finished (or canceled) keeps its state, `status` says which, `detail` is
    one line for a person; `error` is set when the request could not be served."""

    MSG_TYPE: ClassVar[str] = "job.cancel_reply"
    job_id: JobId
    canceled: bool
    status: str | None = None
    detail: str = ""
    error: str | None = None


class JobCanceled(Payload):
    """Broadcast on `jobs.canceled.{job_id}` once the job's state says canceled: every
    worker drops the job's queued tasks and interrupts its running ones."""

    MSG_TYPE: ClassVar[str] = "job.canceled"
    job_id: JobId
    reason: CancelReason = ""


MESSAGE_TYPES: Final[dict[str, type[Payload]]] = {
    m.MSG_TYPE: m
    for m in (
        JobSubmit,
        TaskAssign,
        TaskResult,
        AgentEvent,
        AgentEventBatch,
        HistoryQuery,
        HistoryReply,
        SummarizeRequest,
        SummarizeReply,
        Command,
        CommandReply,
        CancelRequest,
        CancelReply,
        JobCanceled,
        StreamItem,
    )
}

P = TypeVar("P", bound=Payload)


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=65535)
    id: JobId = Field(default_factory=new_id)
    """A new id, or one derived from the job id (deduplication: a tenant's has a dot)."""
    sender: Token
    msg_type: Annotated[str, StringConstraints(max_length=64)]
    created_at: datetime = Field(default_factory=utcnow)
    payload: P


def encode(payload: Payload, *, sender: str, msg_id: str | None = None) -> bytes:
    env: Envelope[Payload] = Envelope(
        sender=sender, msg_type=payload.MSG_TYPE, payload=payload, id=msg_id or new_id()
    )
    unset = {f for f in payload.OMIT_WHEN_NONE if getattr(payload, f) is None}
    return env.model_dump_json(exclude={"payload": unset} if unset else None).encode()


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "message"
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


_ENVELOPES: dict[type[Payload], type[Envelope[Any]]] = {}


def decode(data: bytes, payload_type: type[P], *, max_bytes: int | None = None) -> Envelope[P]:
    """Decode `data` as an envelope of `payload_type`; `MessageDecodeError` names the field.

    Hostile input (any bytes, any size, any nesting) raises nothing but `MessageDecodeError`:
    a message above `max_bytes` (never more than `HARD_MAX_MESSAGE_BYTES`) is refused unread.
    """
    cap = HARD_MAX_MESSAGE_BYTES if max_bytes is None else min(max_bytes, HARD_MAX_MESSAGE_BYTES)
    if len(data) > cap:
        raise MessageDecodeError(f"message of {len(data)} bytes exceeds the cap of {cap}")
    envelope = _ENVELOPES.get(payload_type)
    if envelope is None:  # pydantic caches the class too, behind a slower lookup
        envelope = _ENVELOPES[payload_type] = Envelope[payload_type]  # type: ignore[valid-type]  # a generic model parametrized at run time
    try:
        env = envelope.model_validate_json(data)
    except ValidationError as e:
        raise MessageDecodeError(f"invalid {payload_type.MSG_TYPE}: {_first_error(e)}") from e
    except Exception as e:  # the parser's own limits (recursion, sizes): still just bad input
        raise MessageDecodeError(
            f"invalid {payload_type.MSG_TYPE}: {type(e).__name__}: {str(e)[:200]}"
        ) from e
    if env.msg_type != payload_type.MSG_TYPE:
        raise MessageDecodeError(
            f"msg_type {env.msg_type!r} where {payload_type.MSG_TYPE!r} was expected"
        )
    if env.schema_version > SCHEMA_VERSION:
        raise MessageDecodeError(
            f"schema_version {env.schema_version} is newer than supported {SCHEMA_VERSION}"
        )
    return env


_BATCH_MARK: Final = b'"msg_type":"agent.event_batch"'


def decode_events(
    data: bytes, *, max_bytes: int | None = None
) -> tuple[Envelope[AgentEvent] | Envelope[AgentEventBatch], list[AgentEvent]]:
    """Decode a message of the AGENT_EVENTS stream: one `AgentEvent` or an
    `AgentEventBatch`. Returns the envelope and its events in emission order."""
    batch_first = _BATCH_MARK in data
    try:
        return _decode_events_as(data, batch=batch_first, max_bytes=max_bytes)
    except MessageDecodeError as first:
        try:  # the mark can also appear inside a single event's data
            return _decode_events_as(data, batch=not batch_first, max_bytes=max_bytes)
        except MessageDecodeError:
            raise first from None


def _decode_events_as(
    data: bytes, *, batch: bool, max_bytes: int | None
) -> tuple[Envelope[AgentEvent] | Envelope[AgentEventBatch], list[AgentEvent]]:
    if batch:
        many = decode(data, AgentEventBatch, max_bytes=max_bytes)
        return many, list(many.payload.events)
    one = decode(data, AgentEvent, max_bytes=max_bytes)
    return one, [one.payload]


class JobStatus(StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    REDUCING = "reducing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    """Stopped on request (`AgentBusClient.cancel`): final, never resumed."""

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class JobState(BaseModel):
    """The value of a job's key in the jobs KV bucket.

    Its size does not grow with the document: the tasks recorded at the current level are
    a count and a bitmap (`level_bits`, one bit per task, base64), and the task summaries
    live under their own keys in the job-parts bucket."""

    model_config = ConfigDict(extra="forbid")
    job_id: JobId
    status: JobStatus
    title: str = ""
    skill: Token = "summarize"
    document_chars: int = Field(default=0, ge=0)
    document_sha256: Sha256Hex | None = None
    """Fingerprint of the document: a re-submission under the same id must match it."""
    summary_chars: int = Field(default=1200, ge=20)
    chunks: int = Field(default=0, ge=0)
    """Number of map tasks (document chunks)."""
    level: int = Field(default=0, ge=0)
    """Current step: 0 = map, 1+ = reduce."""
    level_tasks: int = Field(default=0, ge=0)
    level_done: int = Field(default=0, ge=0)
    """Number of the current level's tasks whose result is recorded."""
    level_bits: str = ""
    """Which of them: a bitmap, bit i of byte i // 8 for task i, base64 ("" = none)."""
    tasks_done_total: int = Field(default=0, ge=0)
    usage: TokenUsage | None = None
    """Tokens of the job's model calls so far, summed over its recorded tasks (each task
    once, map and reduce), as the backend's server reported them; None: no backend
    reported any (extractive, or a text within its budget)."""
    summary: str | None = None
    summary_ref: DocumentRef | None = None
    error: str | None = None
    failed_by: str | None = None
    """Why a failed job failed (intake, rejected, task, timeout); only a job failed by a
    task goes on when that task's dead letter is replayed and succeeds."""
    timeout_s: float | None = Field(default=None, ge=0)
    """The job's own deadline (seconds from creation); None: the orchestrator's setting."""
    tenant: Token = "default"
    """Whose job: its tasks are shared out, capped and budgeted by tenant."""
    priority: Priority = Priority.NORMAL
    """Which tasks (map and reduce) of the job workers take first."""
    timer: Annotated[str, StringConstraints(max_length=256)] | None = None
    """The ack subject of the job's message, which stays pending as the job's timer until
    the job ends (the orchestrator acks it then)."""
    publishing: bool = False
    """The map tasks may not all be published yet: set by the intake when it writes the
    state, cleared once they are (a job of one chunk skips that write: one less per job)
    and when the job ends.
    While it is set, the job's message coming back redoes the intake (a task published
    already is dropped as a duplicate) instead of being taken for the job's timer. States
    written before the field existed read as published."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    trace_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_level_done(cls, data: Any) -> Any:
        """States written before the bitmap listed the recorded indices: convert them."""
        if isinstance(data, dict) and isinstance(data.get("level_done"), list):
            indices = {i for i in data["level_done"] if isinstance(i, int) and i >= 0}
            if indices and max(indices) >= MAX_LEGACY_TASK_INDEX:
                raise ValueError(
                    f"level_done: task index {max(indices)} out of range "
                    f"(at most {MAX_LEGACY_TASK_INDEX - 1})"
                )
            bits = bytearray((max(indices, default=-1) + 8) // 8)
            for i in indices:
                bits[i >> 3] |= 1 << (i & 7)
            data = {
                **data,
                "level_done": len(indices),
                "level_bits": base64.b64encode(bytes(bits)).decode() if indices else "",
            }
        return data

    @property
    def progress(self) -> float:
        if self.status is JobStatus.COMPLETED:
            return 1.0
        if self.chunks == 0:
            return 0.0
        done_map = self.chunks if self.level > 0 else self.level_done
        return min(0.99, done_map / self.chunks * (0.9 if self.chunks > 1 else 0.99))


def decode_job_state(data: bytes, *, max_bytes: int = HARD_MAX_MESSAGE_BYTES) -> JobState:
    """Decode a job's KV value; anything wrong raises `MessageDecodeError` only."""
    cap = min(max_bytes, HARD_MAX_MESSAGE_BYTES)
    if len(data) > cap:
        raise MessageDecodeError(f"job state of {len(data)} bytes exceeds the cap of {cap}")
    try:
        return JobState.model_validate_json(data)
    except ValidationError as e:
        raise MessageDecodeError(f"invalid job state: {_first_error(e)}") from e
    except Exception as e:
        raise MessageDecodeError(f"invalid job state: {type(e).__name__}: {str(e)[:200]}") from e
