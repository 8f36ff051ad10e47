"""A2A v1.0 views of agentbus jobs (pure): a job is an A2A task (task id = job id), its
live partial results are the task's stream events, the final summary its artifact.

Stream event ids are `{cursor}.{n}`: the n-th A2A event made of the partial result at that
stream cursor (a final result makes two: the summary artifact, then the final status).
`Last-Event-ID` (on SubscribeToTask / tasks/resubscribe) resumes right after that event,
so a reader that reconnects gets every event once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    HTTPAuthSecurityScheme,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.timestamp_pb2 import Timestamp

from agentbus.client.stream import PartialResult
from agentbus.contract.messages import JobState, JobStatus, StreamKind

__all__ = [
    "SUMMARY_ARTIFACT",
    "EventId",
    "agent_card",
    "job_task",
    "stream_events",
    "task_state",
]

SUMMARY_ARTIFACT: Final = "summary"
PROTOCOL_VERSION: Final = "1.0"

_STATES: Final = {
    JobStatus.ACCEPTED: TaskState.TASK_STATE_SUBMITTED,
    JobStatus.RUNNING: TaskState.TASK_STATE_WORKING,
    JobStatus.REDUCING: TaskState.TASK_STATE_WORKING,
    JobStatus.COMPLETED: TaskState.TASK_STATE_COMPLETED,
    JobStatus.FAILED: TaskState.TASK_STATE_FAILED,
    JobStatus.CANCELED: TaskState.TASK_STATE_CANCELED,
}


def task_state(status: JobStatus) -> TaskState:
    return _STATES[status]


@dataclass(frozen=True, order=True, slots=True)
class EventId:
    """Where an A2A stream event stands: the partial result's cursor, then its index."""

    cursor: int
    n: int

    def __str__(self) -> str:
        return f"{self.cursor}.{self.n}"

    @classmethod
    def parse(cls, value: str | None) -> EventId | None:
        """`C.n` (or a bare cursor `C`: every event of that result was seen); None when
        absent. `ValueError` naming the value otherwise."""
        if value is None or not value.strip():
            return None
        text = value.strip()
        cursor, dot, n = text.partition(".")
        if not cursor.isdigit() or len(cursor) > 19 or (dot and (not n.isdigit() or len(n) > 3)):
            raise ValueError(f"event id {value[:40]!r} is not CURSOR.N")
        return cls(int(cursor), int(n) if dot else 1 << 30)


def _timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _agent_message(text: str, *, task_id: str) -> Message:
    return Message(
        message_id=f"{task_id}-status",
        task_id=task_id,
        context_id=task_id,
        role=Role.ROLE_AGENT,
        parts=[Part(text=text)],
    )


def job_task(state: JobState, *, summary: str | None = None) -> Task:
    """The job as an A2A task: its state, progress (metadata), the summary artifact."""
    status = TaskStatus(state=task_state(state.status), timestamp=_timestamp(state.updated_at))
    if state.error:
        status.message.CopyFrom(_agent_message(state.error, task_id=state.job_id))
    task = Task(id=state.job_id, context_id=state.job_id, status=status)
    task.metadata.update(
        {
            "progress": round(state.progress, 4),
            "tenant": state.tenant,
            "skill": state.skill,
            "title": state.title,
        }
    )
    text = summary if summary is not None else state.summary
    if state.status is JobStatus.COMPLETED and text is not None:
        task.artifacts.append(
            Artifact(artifact_id=SUMMARY_ARTIFACT, name="summary", parts=[Part(text=text)])
        )
    return task


def _status(
    task_id: str, state: TaskState, text: str, *, progress: float | None = None
) -> StreamResponse:
    event = TaskStatusUpdateEvent(
        task_id=task_id,
        context_id=task_id,
        status=TaskStatus(state=state, message=_agent_message(text, task_id=task_id)),
    )
    if progress is not None:
        event.metadata.update({"progress": progress})
    return StreamResponse(status_update=event)


def _artifact(
    task_id: str, artifact_id: str, text: str, *, append: bool, last: bool, name: str = ""
) -> StreamResponse:
    return StreamResponse(
        artifact_update=TaskArtifactUpdateEvent(
            task_id=task_id,
            context_id=task_id,
            artifact=Artifact(artifact_id=artifact_id, name=name, parts=[Part(text=text)]),
            append=append,
            last_chunk=last,
        )
    )


def stream_events(item: PartialResult, *, summary: str | None = None) -> list[StreamResponse]:
    """The A2A events of one partial result, in order (`summary`: the final summary when
    it travelled by reference)."""
    job = item.job_id
    part = f"part-{item.level}-{item.index}"
    working = TaskState.TASK_STATE_WORKING
    match item.kind:
        case StreamKind.STARTED:
            return [_status(job, working, f"split into {item.count} chunks", progress=0.0)]
        case StreamKind.CHUNK:
            name = f"level {item.level} part {item.index} of {item.count}"
            return [_artifact(job, part, item.text, append=False, last=True, name=name)]
        case StreamKind.DELTA:
            return [_artifact(job, part, item.text, append=not item.restart, last=False)]
        case StreamKind.REDUCE:
            return [_status(job, working, f"reduce level {item.level}: {item.count} tasks")]
        case StreamKind.COMPLETED:
            text = summary if summary is not None else item.text
            return [
                _artifact(job, SUMMARY_ARTIFACT, text, append=False, last=True, name="summary"),
                _status(job, TaskState.TASK_STATE_COMPLETED, "completed", progress=1.0),
            ]
        case StreamKind.FAILED:
            return [_status(job, TaskState.TASK_STATE_FAILED, item.error or "failed")]
        case StreamKind.CANCELED:
            return [_status(job, TaskState.TASK_STATE_CANCELED, item.error or "canceled")]
    return []


def agent_card(*, url: str, skills: list[str], version: str) -> AgentCard:
    """The agent card: one skill per installed agentbus skill, JSON-RPC at `url`."""
    card = AgentCard(
        name="agentbus",
        description="A multi-agent document pipeline on NATS: long documents split, "
        "summarized by a pool of workers, reduced to one summary; durable, resumable streams "
        "(SubscribeToTask with Last-Event-ID).",
        version=version,
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION)
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id=skill,
                name=skill,
                description=f"the agentbus `{skill}` skill over a whole document of any length",
                tags=["agentbus", skill],
                input_modes=["text/plain"],
                output_modes=["text/plain"],
            )
            for skill in skills
        ],
    )
    card.security_schemes["bearer"].CopyFrom(
        SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer"))
    )
    card.security_requirements.append(SecurityRequirement())
    card.security_requirements[0].schemes["bearer"].SetInParent()
    return card
