"""The AsyncAPI 3.0 document of the wire contract, generated from the code.

Channel addresses come from the `subjects` module (a subject function is called with
placeholder tokens to obtain its template, so `task_assign` yields
`tasks.{skill}.assign`); message payloads are the JSON schemas of the pydantic models
(`Envelope[...]`, `model_json_schema`). Each channel also carries an `x-nats` extension
with what AsyncAPI has no words for: the stream, the durable consumer or queue group, and
the wildcard subjects that a stream or subscriber binds.

`agentbus asyncapi` writes it; `tests/unit/test_asyncapi.py` checks that every subject of
the `subjects` module is in it and that real encoded messages validate against it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from agentbus.contract import headers, subjects
from agentbus.contract.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    DocumentRef,
    Envelope,
    JobState,
    Payload,
)
from agentbus.contract.priority import Priority
from agentbus.contract.subjects import SRV_PREFIX, WORKER_SERVICE, rpc_queue, rpc_subject
from agentbus.contract.version import agentbus_version
from agentbus.contract.workers import WorkerStats

__all__ = ["ASYNCAPI_VERSION", "build_asyncapi", "render_asyncapi", "subject_template"]

ASYNCAPI_VERSION: Final = "3.0.0"
_REF: Final = "#/components/schemas/{model}"
_PLACEHOLDER: Final = "__{name}__"
_SKILL_EXAMPLE: Final = subjects.SUMMARIZE_SKILL


def subject_template(fn: Callable[..., str]) -> str:
    """The address template of a subject function: `task_assign` -> `tasks.{skill}.assign`."""
    names = list(inspect.signature(fn).parameters)
    address = fn(*(_PLACEHOLDER.format(name=n) for n in names))
    for n in names:
        address = address.replace(_PLACEHOLDER.format(name=n), "{" + n + "}")
    return address


_EVENTS: Final = ["AgentEvent", "AgentEventBatch"]
"""The two forms of a message on the events channels."""

_PARAMETERS: Final = {
    "skill": f"A worker skill (e.g. `{_SKILL_EXAMPLE}`); one subject token.",
    "priority": "A job's priority other than normal: `high` or `low`.",
    "tenant": "A configured tenant (AGENTBUS_TENANTS__CONFIGURED); one subject token.",
    "cap": "A capped tenant's max_in_flight (a new cap has new permits on its own subject).",
    "job_id": "The job id: a subject token ([A-Za-z0-9_-]{1,128}), or two for a tenant's "
    "job (TENANT.ID).",
    "task_id": "The task id within its job: `{level}-{index}`.",
    "agent_id": "The id of one running service replica (AGENTBUS_AGENT_ID).",
    "source_stream": "The stream a dead letter came from, lower-case (`tasks`, `jobs`, ...).",
    "verb": "nats.micro verb: PING, INFO or STATS.",
    "name": f"nats.micro service name (`{WORKER_SERVICE}` for workers).",
    "id": "nats.micro service instance id.",
}


@dataclass(frozen=True)
class _Channel:
    id: str
    address: str | None
    title: str
    description: str
    messages: Sequence[str]
    nats: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


def _channels() -> list[_Channel]:
    t = subject_template
    return [
        _Channel(
            "jobsSubmit", subjects.JOBS_SUBJECT, "Job intake",
            "A client submits one document (inline or by object-store reference). The PubAck "
            "is the durable acceptance; the job id is the Nats-Msg-Id (deduplication).",
            ["JobSubmit"],
            {"kind": "jetstream", "stream": subjects.JOBS_STREAM, "retention": "workqueue",
             "subjects": [subjects.JOBS_SUBJECT], "consumer": subjects.ORCHESTRATOR_CONSUMER},
        ),
        _Channel(
            "jobsSubmitTenant", t(subjects.tenant_submit), "Job intake as a tenant",
            "A client submits a job as one tenant; NATS permissions reserve the subject for "
            "that tenant's users, so the subject's tenant is the job's, whatever it claims. "
            "The JOBS stream takes the subjects of configured tenants, each read by its own "
            "orchestrator consumer: the intake is shared among tenants by weight.",
            ["JobSubmit"],
            {"kind": "jetstream", "stream": subjects.JOBS_STREAM, "retention": "workqueue",
             "subjects": [subjects.JOBS_TENANT_SUBJECTS],
             "consumer": subjects.tenant_orchestrator_consumer("acme"),
             "consumer_template": t(subjects.tenant_orchestrator_consumer)},
            {"tenant": ["acme"]},
        ),
        _Channel(
            "tasksAssign", t(subjects.task_assign), "Task assignment",
            "The orchestrator publishes one task per chunk (level 0) or per group of summaries "
            "(reduce levels); workers of the skill pull them from a shared durable consumer. "
            "Nats-Msg-Id is `{job_id}:{task_id}`.",
            ["TaskAssign"],
            {"kind": "jetstream", "stream": subjects.TASKS_STREAM, "retention": "workqueue",
             "subjects": [subjects.TASKS_SUBJECTS],
             "consumer": subjects.workers_consumer(_SKILL_EXAMPLE),
             "consumer_template": t(subjects.workers_consumer),
             "consumers_named_like_queue": subjects.WORKERS_CONSUMER},
            {"skill": [_SKILL_EXAMPLE]},
        ),
        _Channel(
            "tasksAssignPriority", t(subjects.priority_task_assign), "Task assignment (high, low)",
            "The tasks of a high or low priority job (map and reduce), in the same stream; "
            "normal-priority tasks stay on `tasks.{skill}.assign`. One durable consumer per "
            "priority: workers pull high before normal before low, and a lower priority "
            "with work is served after a bounded number of higher ones (no starvation).",
            ["TaskAssign"],
            {"kind": "jetstream", "stream": subjects.TASKS_STREAM, "retention": "workqueue",
             "subjects": [subjects.TASKS_PRIORITY_SUBJECTS],
             "consumer": subjects.priority_workers_consumer(_SKILL_EXAMPLE, Priority.HIGH.value),
             "consumer_template": t(subjects.priority_workers_consumer)},
            {"skill": [_SKILL_EXAMPLE], "priority": [Priority.HIGH.value, Priority.LOW.value]},
        ),
        _Channel(
            "tasksAssignTenant", t(subjects.tenant_task_assign), "Task assignment (tenant)",
            "The tasks of a configured tenant's job at one priority; the default tenant's "
            "stay on the subjects above. One durable consumer per tenant and priority; workers "
            "share each priority's slots among the tenants with work by weight, a capped "
            "tenant's only on its run permits (its cap over all priorities and replicas).",
            ["TaskAssign"],
            {"kind": "jetstream", "stream": subjects.TASKS_STREAM, "retention": "workqueue",
             "subjects": [subjects.TASKS_TENANT_SUBJECTS],
             "consumer": subjects.tenant_workers_consumer(_SKILL_EXAMPLE, "normal", "acme"),
             "consumer_template": t(subjects.tenant_workers_consumer)},
            {"skill": [_SKILL_EXAMPLE], "priority": [p.value for p in Priority],
             "tenant": ["acme"]},
        ),
        _Channel(
            "tasksSlots", t(subjects.tenant_slots), "Run permits (capped tenant)",
            "A capped tenant's run permits: exactly its max_in_flight (`cap`) empty "
            "messages, put there by the provisioner and never acked. A worker pulls one "
            "before each of the tenant's tasks (any priority), holds it while the task runs "
            "(in_progress) and "
            "hands it back (nak): the tenant never runs more tasks than its cap, across its "
            "priorities and every worker replica.",
            ["RunPermit"],
            {"kind": "jetstream", "stream": subjects.TASKS_STREAM, "retention": "workqueue",
             "subjects": [subjects.TASKS_SLOT_SUBJECTS],
             "consumer": subjects.tenant_slots_consumer(_SKILL_EXAMPLE, "acme"),
             "consumer_template": t(subjects.tenant_slots_consumer)},
            {"skill": [_SKILL_EXAMPLE], "tenant": ["acme"], "cap": ["20"]},
        ),
        _Channel(
            "taskResults", t(subjects.result_subject), "Task results",
            "A worker's result for one task, read by the orchestrator; a client may watch a "
            "job's results with the wildcard.",
            ["TaskResult"],
            {"kind": "jetstream", "stream": subjects.RESULTS_STREAM, "retention": "limits",
             "subjects": [subjects.RESULTS_SUBJECTS],
             "wildcards": [t(subjects.job_results_wildcard)],
             "consumer": subjects.ORCHESTRATOR_RESULTS_CONSUMER},
        ),
        _Channel(
            "jobProgress", t(subjects.job_progress), "Live partial results",
            "A job's progress and partial results as they happen: `started` (chunk count, "
            "jobs of more than one chunk), "
            "each `chunk` summary as it completes, each `reduce` level, token `delta`s when "
            "the backend streams, then one final item (`completed` with the summary, or "
            "`failed`). The stream sequence is the reader's resume cursor; readers use "
            "ephemeral ordered consumers (deliver by start sequence, filtered on the job's "
            "subject). Nats-Msg-Id is `{job_id}:p:...` (a fresh id for deltas).",
            ["StreamItem"],
            {"kind": "jetstream", "stream": subjects.PROGRESS_STREAM, "retention": "limits",
             "subjects": [subjects.PROGRESS_SUBJECTS], "consumer": "ephemeral ordered",
             "retention_setting": "AGENTBUS_TOPOLOGY__PROGRESS_MAX_AGE_S"},
        ),
        _Channel(
            "agentEvents", t(subjects.agent_events), "Agent events",
            "Every step of every service, archived exactly once by the event-archiver (the "
            "event id is its key). Events emitted side by side share one message "
            "(AgentEventBatch, group commit); a lone event is an AgentEvent whose id is "
            "the Nats-Msg-Id.",
            list(_EVENTS),
            {"kind": "jetstream", "stream": subjects.AGENT_EVENTS_STREAM, "retention": "limits",
             "subjects": list(subjects.AGENT_EVENTS_SUBJECTS),
             "wildcards": [subjects.AGENT_WILDCARD],
             "consumer": subjects.ARCHIVER_CONSUMER},
        ),
        _Channel(
            "agentResults", t(subjects.agent_results), "Agent result events",
            "Events that record a produced result (`task.completed`), same stream and "
            "forms as the events.",
            list(_EVENTS),
            {"kind": "jetstream", "stream": subjects.AGENT_EVENTS_STREAM, "retention": "limits",
             "subjects": list(subjects.AGENT_EVENTS_SUBJECTS),
             "consumer": subjects.ARCHIVER_CONSUMER},
        ),
        _Channel(
            "deadLetters", t(subjects.dlq_subject), "Dead letters",
            "Poison and over-delivered messages, filed by the stream they came from, with the "
            "original payload and headers plus the reason.",
            ["DeadLetter"],
            {"kind": "jetstream", "stream": subjects.DLQ_STREAM, "retention": "limits",
             "subjects": [subjects.DLQ_SUBJECTS]},
        ),
        _Channel(
            "rpcSkill", t(rpc_subject), "Synchronous skill calls",
            "Core request/reply, at-most-once and low latency: one worker of the skill's "
            f"queue group answers (`{subjects.RPC_SUMMARIZE}` in queue group "
            f"`{subjects.WORKERS_QUEUE}`).",
            ["SummarizeRequest"],
            {"kind": "core", "pattern": "request-reply",
             "subjects": [subjects.RPC_SUMMARIZE], "queue_group": rpc_queue(_SKILL_EXAMPLE),
             "queue_group_template": "{skill}-workers"},
            {"skill": [_SKILL_EXAMPLE]},
        ),
        _Channel(
            "rpcHistory", subjects.RPC_HISTORY, "Event history queries",
            "Core request/reply answered by an event-archiver replica, one page per "
            "request: at most `limit` events after the cursor `after`, within the server's "
            "max_payload; the reply's `next` asks for the following page (absent on the last).",
            ["HistoryQuery"],
            {"kind": "core", "pattern": "request-reply",
             "subjects": [subjects.RPC_HISTORY, subjects.RPC_HISTORY_TENANTS],
             "queue_group": subjects.ARCHIVER_QUEUE,
             "as_tenant": "rpc.history.{tenant}: answered for that tenant's job ids "
             "({tenant}.{id}) only; the only form a tenant's NATS users may ask on"},
        ),
        _Channel(
            "jobsCancel", subjects.JOBS_CANCEL, "Cancel requests",
            "Core request/reply answered by one orchestrator replica: the job's state "
            "becomes `canceled` (terminal; a finished job is left as it is), the cancel is "
            "broadcast to the workers, the job's timer acked and its documents removed. "
            "Idempotent; the reply says what changed in one line.",
            ["CancelRequest"],
            {"kind": "core", "pattern": "request-reply",
             "subjects": [subjects.JOBS_CANCEL, subjects.JOBS_CANCEL_TENANTS],
             "queue_group": subjects.ORCHESTRATOR_CONSUMER,
             "as_tenant": "jobs.cancel.{tenant}: refused for another tenant's job; the only "
             "form a tenant's NATS users may ask on"},
        ),
        _Channel(
            "jobCanceled", t(subjects.job_canceled), "Cancel broadcasts",
            "Sent by the orchestrator once a job's state says canceled; every worker replica "
            "subscribes (no queue group): running tasks of the job are interrupted, queued "
            "ones dropped when pulled. A worker that missed it (started or reconnected "
            "later) reads the job state the first time it meets the job.",
            ["JobCanceled"],
            {"kind": "core", "pattern": "broadcast",
             "subjects": [subjects.JOBS_CANCELED_WILDCARD]},
        ),
        _Channel(
            "agentCommands", t(subjects.agent_commands), "Control commands",
            "ping, pause (stop pulling new work, finish in-flight), resume, drain (finish and "
            "exit); every service listens on its own subject.",
            ["Command"],
            {"kind": "core", "pattern": "request-reply",
             "subjects": [subjects.AGENT_COMMANDS_WILDCARD]},
        ),
        _Channel(
            "serviceDiscovery", f"{SRV_PREFIX}.{{verb}}.{{name}}.{{id}}", "Worker discovery",
            f"nats.micro discovery: `{SRV_PREFIX}.{{verb}}`, `{SRV_PREFIX}.{{verb}}.{{name}}` "
            f"and `{SRV_PREFIX}.{{verb}}.{{name}}.{{id}}`; workers register as `{WORKER_SERVICE}` "
            "and report `WorkerStats` in their endpoint stats.",
            ["MicroRequest"],
            {"kind": "core", "pattern": "request-many",
             "prefix": SRV_PREFIX, "service": WORKER_SERVICE,
             "subjects": [f"{SRV_PREFIX}.PING", f"{SRV_PREFIX}.INFO", f"{SRV_PREFIX}.STATS",
                          f"{SRV_PREFIX}.STATS.{WORKER_SERVICE}"]},
            {"verb": ["PING", "INFO", "STATS"], "name": [WORKER_SERVICE]},
        ),
        _Channel(
            "replies", None, "Replies",
            "The requester's inbox (`_INBOX.>`); the address is set per request.",
            ["SummarizeReply", "HistoryReply", "CommandReply", "CancelReply", "MicroPing",
             "MicroInfo", "MicroStats"],
            {"kind": "core", "pattern": "reply"},
        ),
    ]  # fmt: skip


@dataclass(frozen=True)
class _Operation:
    id: str
    action: str
    channel: str
    messages: Sequence[str]
    by: str
    summary: str
    reply: Sequence[str] = ()


_OPERATIONS: Final = (
    _Operation("submitJob", "send", "jobsSubmit", ["JobSubmit"], "client", "Submit a document."),
    _Operation("receiveJob", "receive", "jobsSubmit", ["JobSubmit"], "orchestrator",
               "Record the job, chunk it, publish its tasks; then keep the message as the "
               "job's timer (nak with the delay to its deadline check) until the job ends."),
    _Operation("submitTenantJob", "send", "jobsSubmitTenant", ["JobSubmit"], "client",
               "Submit a document as a tenant."),
    _Operation("receiveTenantJob", "receive", "jobsSubmitTenant", ["JobSubmit"],
               "orchestrator", "As receiveJob, after the tenant's job rate and token budget "
               "let the job in."),
    _Operation("assignTenantTask", "send", "tasksAssignTenant", ["TaskAssign"],
               "orchestrator", "Publish a map or reduce task of a configured tenant's job."),
    _Operation("receiveTenantTask", "receive", "tasksAssignTenant", ["TaskAssign"], "worker",
               "Pull each priority's tasks across tenants by weight, within each tenant's cap."),
    _Operation("assignTask", "send", "tasksAssign", ["TaskAssign"], "orchestrator",
               "Publish a map or reduce task."),
    _Operation("receiveTask", "receive", "tasksAssign", ["TaskAssign"], "worker",
               "Pull tasks for free slots only; in_progress while running; ack after the "
               "result is published."),
    _Operation("issuePermits", "send", "tasksSlots", ["RunPermit"], "provisioner",
               "Put a capped tenant's run permits in place (as many as its cap)."),
    _Operation("holdPermit", "receive", "tasksSlots", ["RunPermit"], "worker",
               "Hold a permit while one of the tenant's tasks runs; nak it after."),
    _Operation("assignPriorityTask", "send", "tasksAssignPriority", ["TaskAssign"],
               "orchestrator", "Publish a map or reduce task of a high or low priority job."),
    _Operation("receivePriorityTask", "receive", "tasksAssignPriority", ["TaskAssign"],
               "worker", "Pull high before normal before low, for free slots only; a lower "
               "priority with work is served after a bounded number of higher ones."),
    _Operation("sendResult", "send", "taskResults", ["TaskResult"], "worker",
               "Publish a task's result (or its failure)."),
    _Operation("receiveResult", "receive", "taskResults", ["TaskResult"], "orchestrator",
               "Collect results; reduce; write the final summary to the jobs KV bucket."),
    _Operation("publishProgress", "send", "jobProgress", ["StreamItem"],
               "orchestrator (chunks, levels, final), worker (token deltas)",
               "Publish a job's live partial result; chunk items are stored before the "
               "result is recorded, so the final item is the last."),
    _Operation("followJob", "receive", "jobProgress", ["StreamItem"], "client",
               "Read a job's items in order from a cursor until its final item "
               "(`AgentBusClient.stream`, `agentbus submit --follow`)."),
    _Operation("emitEvent", "send", "agentEvents", _EVENTS, "every service",
               "Record a step."),
    _Operation("emitResultEvent", "send", "agentResults", _EVENTS, "worker",
               "Record a produced result."),
    _Operation("archiveEvent", "receive", "agentEvents", _EVENTS, "archiver",
               "Store each event once (idempotent on its id)."),
    _Operation("archiveResultEvent", "receive", "agentResults", _EVENTS, "archiver",
               "Store each result event once."),
    _Operation("deadLetter", "send", "deadLetters", ["DeadLetter"], "every service",
               "File a poison or over-delivered message with the reason."),
    _Operation("summarizeSync", "send", "rpcSkill", ["SummarizeRequest"], "client",
               "Ask one worker for a summary now (at-most-once).", ["SummarizeReply"]),
    _Operation("serveSummarize", "receive", "rpcSkill", ["SummarizeRequest"], "worker",
               "Run the skill on the request and reply.", ["SummarizeReply"]),
    _Operation("queryHistory", "send", "rpcHistory", ["HistoryQuery"], "client",
               "Ask for a job's archived events.", ["HistoryReply"]),
    _Operation("serveHistory", "receive", "rpcHistory", ["HistoryQuery"], "archiver",
               "Answer from the archive.", ["HistoryReply"]),
    _Operation("cancelJob", "send", "jobsCancel", ["CancelRequest"], "client",
               "Cancel a job (idempotent).", ["CancelReply"]),
    _Operation("serveCancel", "receive", "jobsCancel", ["CancelRequest"], "orchestrator",
               "Write the canceled state, broadcast it, ack the job's timer, remove its "
               "documents, reply.", ["CancelReply"]),
    _Operation("broadcastCancel", "send", "jobCanceled", ["JobCanceled"], "orchestrator",
               "Tell every worker that a job is canceled."),
    _Operation("receiveCancel", "receive", "jobCanceled", ["JobCanceled"], "worker",
               "Interrupt the job's running tasks; drop its queued ones when pulled."),
    _Operation("sendCommand", "send", "agentCommands", ["Command"], "operator (agentbus ctl)",
               "Control one service replica.", ["CommandReply"]),
    _Operation("receiveCommand", "receive", "agentCommands", ["Command"], "every service",
               "Apply a control command and reply with the state.", ["CommandReply"]),
    _Operation("discoverWorkers", "send", "serviceDiscovery", ["MicroRequest"],
               "operator (agentbus workers)", "Ask every worker for its stats.",
               ["MicroPing", "MicroInfo", "MicroStats"]),
    _Operation("answerDiscovery", "receive", "serviceDiscovery", ["MicroRequest"], "worker",
               "Answer PING, INFO and STATS (nats.micro).",
               ["MicroPing", "MicroInfo", "MicroStats"]),
)  # fmt: skip

_ENVELOPED: Final[tuple[type[Payload], ...]] = tuple(MESSAGE_TYPES.values())

_JETSTREAM_MESSAGES: Final = frozenset(
    {"JobSubmit", "TaskAssign", "TaskResult", "AgentEvent", "AgentEventBatch", "StreamItem"}
)


def _headers_schema(*, jetstream: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "traceparent": {"type": "string", "description": "W3C trace context"},
        "tracestate": {"type": "string", "description": "W3C trace context"},
    }
    if jetstream:
        props[headers.MSG_ID_HEADER] = {
            "type": "string",
            "description": "Deduplication id (job id, `{job_id}:{task_id}`, event id)",
        }
    return {"type": "object", "properties": props}


def _dead_letter_headers() -> dict[str, Any]:
    described = {
        headers.DLQ_HEADER_REASON: "Why the message was dead-lettered",
        headers.DLQ_HEADER_STREAM: "The stream it came from",
        headers.DLQ_HEADER_SUBJECT: "Its original subject",
        headers.DLQ_HEADER_SEQ: "Its sequence in that stream",
        headers.DLQ_HEADER_DELIVERIES: "How many times it was delivered",
        headers.DLQ_HEADER_MSG_ID: "Its original Nats-Msg-Id, if any",
    }
    return {
        "type": "object",
        "properties": {k: {"type": "string", "description": v} for k, v in described.items()},
        "required": [
            headers.DLQ_HEADER_REASON,
            headers.DLQ_HEADER_STREAM,
            headers.DLQ_HEADER_SUBJECT,
        ],
    }


def _micro_schemas() -> dict[str, Any]:
    identity: dict[str, Any] = {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "id": {"type": "string"},
        "version": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    endpoint_props: dict[str, Any] = {
        "name": {"type": "string"},
        "subject": {"type": "string"},
        "queue_group": {"type": "string"},
    }
    endpoint = {"type": "object", "properties": endpoint_props}
    stats_endpoint = {
        "type": "object",
        "properties": {
            **endpoint_props,
            "num_requests": {"type": "integer"},
            "num_errors": {"type": "integer"},
            "last_error": {"type": "string"},
            "processing_time": {"type": "integer"},
            "average_processing_time": {"type": "integer"},
            "data": {"$ref": _REF.format(model="WorkerStats")},
        },
    }
    return {
        "MicroPing": {
            "type": "object",
            "description": "io.nats.micro.v1.ping_response",
            "properties": dict(identity),
            "required": ["type", "name", "id", "version"],
        },
        "MicroInfo": {
            "type": "object",
            "description": "io.nats.micro.v1.info_response",
            "properties": {
                **identity,
                "description": {"type": ["string", "null"]},
                "endpoints": {"type": "array", "items": endpoint},
            },
            "required": ["type", "name", "id", "version", "endpoints"],
        },
        "MicroStats": {
            "type": "object",
            "description": "io.nats.micro.v1.stats_response",
            "properties": {
                **identity,
                "started": {"type": "string"},
                "endpoints": {"type": "array", "items": stats_endpoint},
            },
            "required": ["type", "name", "id", "version", "endpoints"],
        },
    }


def _schemas() -> tuple[dict[str, Any], dict[str, str]]:
    """Every component schema, and each enveloped message's schema name."""
    models: list[type[BaseModel]] = [Envelope[p] for p in _ENVELOPED]  # type: ignore[valid-type]  # generics parametrized at run time
    extra: list[type[BaseModel]] = [JobState, DocumentRef, WorkerStats]
    key_map, defs = models_json_schema(
        [(m, "validation") for m in (*models, *extra)], ref_template=_REF
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    names: dict[str, str] = {}
    for payload, model in zip(_ENVELOPED, models, strict=True):
        ref = key_map[(model, "validation")]["$ref"]
        name = ref.rsplit("/", 1)[1]
        envelope = schemas[name]
        envelope["properties"]["msg_type"] = {"const": payload.MSG_TYPE, "type": "string"}
        envelope["properties"]["schema_version"]["maximum"] = SCHEMA_VERSION
        envelope["description"] = (payload.__doc__ or "").strip() or f"{payload.__name__}"
        names[payload.__name__] = name
    schemas.update(_micro_schemas())
    return schemas, names


def _messages(names: dict[str, str]) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for payload in _ENVELOPED:
        n = payload.__name__
        messages[n] = {
            "name": payload.MSG_TYPE,
            "title": n,
            "contentType": "application/json",
            "headers": _headers_schema(jetstream=n in _JETSTREAM_MESSAGES),
            "payload": {"$ref": _REF.format(model=names[n])},
        }
    messages["DeadLetter"] = {
        "name": "dead_letter",
        "title": "DeadLetter",
        "summary": "The original message, unchanged, with the DLQ headers added.",
        "contentType": "application/octet-stream",
        "headers": _dead_letter_headers(),
        "payload": {},
    }
    messages["RunPermit"] = {
        "name": "run_permit",
        "title": "RunPermit",
        "summary": "An empty message: one task of its tenant may run while it is held.",
        "payload": {"type": "string", "maxLength": 0},
    }
    messages["MicroRequest"] = {
        "name": "micro.request",
        "title": "MicroRequest",
        "summary": "An empty nats.micro discovery request.",
        "payload": {"type": "string", "maxLength": 0},
    }
    for n in ("MicroPing", "MicroInfo", "MicroStats"):
        messages[n] = {
            "name": f"micro.{n[5:].lower()}",
            "title": n,
            "contentType": "application/json",
            "payload": {"$ref": _REF.format(model=n)},
        }
    return messages


def _channel_doc(ch: _Channel) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": ch.address,
        "title": ch.title,
        "description": ch.description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in ch.messages},
    }
    params = [
        p.strip("{}") for p in (ch.address or "").split(".") if p.startswith("{") and "}" in p
    ]
    if params:
        doc["parameters"] = {
            p: {
                "description": _PARAMETERS.get(p, p),
                **({"examples": ch.examples[p]} if p in ch.examples else {}),
            }
            for p in params
        }
    if ch.nats:
        doc["x-nats"] = ch.nats
    return doc


def _operation_doc(op: _Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "action": op.action,
        "channel": {"$ref": f"#/channels/{op.channel}"},
        "summary": op.summary,
        "messages": [{"$ref": f"#/channels/{op.channel}/messages/{m}"} for m in op.messages],
        "x-agentbus-performed-by": op.by,
    }
    if op.reply:
        doc["reply"] = {
            "channel": {"$ref": "#/channels/replies"},
            "messages": [{"$ref": f"#/channels/replies/messages/{m}"} for m in op.reply],
        }
    return doc


def build_asyncapi(*, server_url: str = "nats://127.0.0.1:4222") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every subject, stream and message of agentbus."""
    schemas, names = _schemas()
    host = server_url.split("://", 1)[-1]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "agentbus",
            "version": agentbus_version(),
            "description": (
                "The wire contract of agentbus: a multi-agent summarization pipeline on NATS "
                "and JetStream. Every message is an envelope (`sender`, `msg_type`, "
                "`payload`, `id`, `schema_version`, `created_at`). Generated from the "
                "`agentbus.subjects` module and the pydantic models by `agentbus asyncapi`."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {"host": host, "protocol": "nats", "description": "NATS with JetStream"}
        },
        "channels": {ch.id: _channel_doc(ch) for ch in _channels()},
        "operations": {op.id: _operation_doc(op) for op in _OPERATIONS},
        "components": {"schemas": schemas, "messages": _messages(names)},
        "x-jetstream": {
            "streams": list(subjects.ALL_STREAMS),
            "key_value": {
                subjects.JOBS_BUCKET: {
                    "key": "{job_id}",
                    "value": {"$ref": _REF.format(model="JobState")},
                    "description": "Job state; clients watch it for progress and completion.",
                },
                subjects.JOB_PARTS_BUCKET: {
                    "key": "{job_id}.{level}.{index}",
                    "value": {"type": "string"},
                    "description": "Summaries of finished tasks until their level is reduced.",
                },
                subjects.TENANTS_BUCKET: {
                    "key": "{tenant}.jobs | {tenant}.tokens",
                    "value": {
                        "type": "object",
                        "properties": {"index": {"type": "integer"}, "used": {"type": "integer"}},
                    },
                    "description": "A tenant's jobs this minute and tokens this budget window "
                    "(fixed windows: `index` = time // window), updated by compare-and-set.",
                },
            },
            "object_store": {
                subjects.DOCUMENTS_BUCKET: {
                    "reference": {"$ref": _REF.format(model="DocumentRef")},
                    "description": "Documents and final summaries above the inline limit "
                    "(AGENTBUS_LIMITS__INLINE_LIMIT_BYTES), passed by reference.",
                }
            },
            "subject_token": subjects.TOKEN_RE.pattern,
            "job_id": {
                "pattern": subjects.JOB_ID_RE.pattern,
                "max_chars": subjects.JOB_ID_MAX_CHARS,
                "description": "One token, or `{tenant}.{id}` for a job of a tenant other "
                "than default: the tenant token is what NATS permissions see, so a "
                "tenant's users read only `$KV.jobs.{tenant}.>` and `progress.{tenant}.>`.",
            },
        },
    }


def render_asyncapi(doc: dict[str, Any]) -> str:
    """The document as indented JSON (which is also valid YAML)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
