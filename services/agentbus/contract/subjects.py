"""The wire contract's names, in one place: every subject, stream, consumer and bucket.

Subject tokens that come from data (job ids, task ids, agent ids, skills) are validated
by `check_token` so that no message can be routed onto a subject it does not own.

A job id is one token, or two for a configured tenant's job: `{tenant}.{id}` (a
*qualified* id, `check_job_id`). The tenant token is what NATS permissions can see: a
tenant's users may read only `$KV.jobs.{tenant}.>` (the job states), `progress.{tenant}.>`
(the live partial results) and ask `rpc.history.{tenant}` and `jobs.cancel.{tenant}`,
whose answerers serve only that tenant's job ids (`job_id_tenant`).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AGENT_COMMANDS_WILDCARD",
    "AGENT_EVENTS_STREAM",
    "AGENT_EVENTS_SUBJECTS",
    "AGENT_WILDCARD",
    "ALL_STREAMS",
    "ARCHIVER_CONSUMER",
    "ARCHIVER_QUEUE",
    "DLQ_STREAM",
    "DLQ_SUBJECTS",
    "DOCUMENTS_BUCKET",
    "JOBS_BUCKET",
    "JOBS_CANCEL",
    "JOBS_CANCELED_WILDCARD",
    "JOBS_CANCEL_TENANTS",
    "JOBS_STREAM",
    "JOBS_SUBJECT",
    "JOBS_TENANT_SUBJECTS",
    "JOB_ID_MAX_CHARS",
    "JOB_ID_RE",
    "JOB_PARTS_BUCKET",
    "ORCHESTRATOR_CONSUMER",
    "ORCHESTRATOR_RESULTS_CONSUMER",
    "PROGRESS_STREAM",
    "PROGRESS_SUBJECTS",
    "RESULTS_STREAM",
    "RESULTS_SUBJECTS",
    "RPC_HISTORY",
    "RPC_HISTORY_TENANTS",
    "RPC_SUMMARIZE",
    "SRV_PREFIX",
    "SUMMARIZE_SKILL",
    "TASKS_PRIORITY_SUBJECTS",
    "TASKS_SLOT_SUBJECTS",
    "TASKS_STREAM",
    "TASKS_SUBJECTS",
    "TASKS_TENANT_SUBJECTS",
    "TENANTS_BUCKET",
    "TOKEN_RE",
    "WORKERS_CONSUMER",
    "WORKERS_QUEUE",
    "WORKER_SERVICE",
    "agent_commands",
    "agent_events",
    "agent_results",
    "cancel_subject",
    "check_job_id",
    "check_token",
    "dlq_subject",
    "history_subject",
    "job_canceled",
    "job_id_refusal",
    "job_id_tenant",
    "job_progress",
    "job_results_wildcard",
    "job_state_subject",
    "priority_task_assign",
    "priority_workers_consumer",
    "qualify_job_id",
    "result_subject",
    "rpc_queue",
    "rpc_subject",
    "srv_subject",
    "task_assign",
    "tenant_orchestrator_consumer",
    "tenant_request_refusal",
    "tenant_slots",
    "tenant_slots_consumer",
    "tenant_submit",
    "tenant_task_assign",
    "tenant_workers_consumer",
    "workers_consumer",
]

TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
JOB_ID_RE: Final = re.compile(r"^(?:[A-Za-z0-9_-]{1,128}\.)?[A-Za-z0-9_-]{1,128}$")
"""A job id: `{id}`, or `{tenant}.{id}` for a configured tenant's job (`check_job_id`)."""
JOB_ID_MAX_CHARS: Final = 128
"""In all (the archive's columns are that wide)."""

# --- JetStream streams -------------------------------------------------------------
JOBS_STREAM: Final = "JOBS"
JOBS_SUBJECT: Final = "jobs.submit"
JOBS_TENANT_SUBJECTS: Final = "jobs.submit.*"
"""`jobs.submit.{tenant}`: a job submitted as a tenant. The subject is the tenant's identity:
NATS permissions let a tenant's user publish only on its own (`agentbus permissions`).
The JOBS stream takes the subjects of configured tenants only (each read by its own
orchestrator consumer, `tenant_orchestrator_consumer`)."""

TASKS_STREAM: Final = "TASKS"
TASKS_SUBJECTS: Final = "tasks.*.assign"
"""Normal-priority tasks (every task of a release before priorities)."""
TASKS_PRIORITY_SUBJECTS: Final = "tasks.*.assign.*"
"""High and low priority tasks, `tasks.{skill}.assign.{priority}`, in the same stream
(`agentbus.contract.priority.task_subject` picks the subject of a priority)."""
TASKS_TENANT_SUBJECTS: Final = "tasks.*.assign.*.*"
"""Tasks of a configured tenant, `tasks.{skill}.assign.{priority}.{tenant}` (the default
tenant's keep the subjects above; `agentbus.contract.tenants.task_subject`)."""
TASKS_SLOT_SUBJECTS: Final = "tasks.*.slots.*.*"
"""A capped tenant's run permits, `tasks.{skill}.slots.{tenant}.{cap}`: exactly `cap`
(`max_in_flight`) messages, never acked, held (unacked) by a worker while it runs one of
the tenant's tasks (`agentbus.bus.tenant_slots`); a new cap, a new subject."""

RESULTS_STREAM: Final = "RESULTS"
RESULTS_SUBJECTS: Final = "results.>"

AGENT_EVENTS_STREAM: Final = "AGENT_EVENTS"
AGENT_EVENTS_SUBJECTS: Final = ("agent.*.events", "agent.*.results")
AGENT_WILDCARD: Final = "agent.>"
"""Everything agents say: events, result events and commands (`agentbus events`)."""

DLQ_STREAM: Final = "DLQ"
DLQ_SUBJECTS: Final = "dlq.>"

PROGRESS_STREAM: Final = "PROGRESS"
PROGRESS_SUBJECTS: Final = "progress.>"
"""Live partial results, one subject per job (`progress.{job_id}`, two tokens for a
tenant's qualified job id): chunk summaries, reduce levels, token deltas, the final item.
The stream sequence is a reader's cursor."""

ALL_STREAMS: Final = (
    JOBS_STREAM,
    TASKS_STREAM,
    RESULTS_STREAM,
    AGENT_EVENTS_STREAM,
    DLQ_STREAM,
    PROGRESS_STREAM,
)

# --- durable consumers and queue groups ---------------------------------------------
ORCHESTRATOR_CONSUMER: Final = "orchestrator"
ORCHESTRATOR_RESULTS_CONSUMER: Final = "orchestrator-results"
WORKERS_QUEUE: Final = "summarize-workers"
WORKERS_CONSUMER: Final = WORKERS_QUEUE
ARCHIVER_CONSUMER: Final = "event-archiver"
ARCHIVER_QUEUE: Final = "event-archivers"

# --- KV and object store -------------------------------------------------------------
JOBS_BUCKET: Final = "jobs"
JOB_PARTS_BUCKET: Final = "job-parts"
DOCUMENTS_BUCKET: Final = "documents"
TENANTS_BUCKET: Final = "tenant-usage"
"""Per-tenant counters (jobs this minute, tokens this window), updated by compare-and-set."""

# --- nats.micro discovery -------------------------------------------------------------
SRV_PREFIX: Final = "$SRV"
WORKER_SERVICE: Final = "agentbus-worker"
"""The nats.micro service name shared by every worker replica (of any skill)."""

# --- core NATS -------------------------------------------------------------------------
SUMMARIZE_SKILL: Final = "summarize"
RPC_SUMMARIZE: Final = "rpc.summarize"
RPC_HISTORY: Final = "rpc.history"
RPC_HISTORY_TENANTS: Final = "rpc.history.*"
"""`rpc.history.{tenant}`: history asked as a tenant; answered only for its job ids."""
AGENT_COMMANDS_WILDCARD: Final = "agent.*.commands"
JOBS_CANCEL: Final = "jobs.cancel"
"""Cancel requests (core request/reply, queue group `orchestrator`): the orchestrator
writes the canceled state (the pure lifecycle decides) and answers one line."""
JOBS_CANCEL_TENANTS: Final = "jobs.cancel.*"
"""`jobs.cancel.{tenant}`: a cancel asked as a tenant; refused for another tenant's job."""
JOBS_CANCELED_WILDCARD: Final = "jobs.canceled.>"
"""Cancel broadcasts, subscribed by every worker replica (no queue group)."""


def check_token(value: str, *, field: str) -> str:
    """Return `value` if it is a safe single subject token, else raise ValueError naming `field`."""
    if not TOKEN_RE.fullmatch(value):
        raise ValueError(f"{field} {value!r} is not a valid subject token ([A-Za-z0-9_-]{{1,128}})")
    return value


def check_job_id(value: str, *, field: str = "job_id") -> str:
    """Return `value` if it is a job id (`{id}` or a tenant's `{tenant}.{id}`, each part a
    subject token), else raise ValueError naming `field`."""
    if len(value) > JOB_ID_MAX_CHARS or not JOB_ID_RE.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is not a valid job id ([A-Za-z0-9_-], or TENANT.ID for a "
            f"tenant's job; at most {JOB_ID_MAX_CHARS} characters)"
        )
    return value


def job_id_tenant(job_id: str) -> str | None:
    """The tenant a qualified job id names (`acme.x` -> `acme`); None for a plain id."""
    head, dot, _ = check_job_id(job_id).partition(".")
    return head if dot else None


def qualify_job_id(job_id: str, tenant: str) -> str:
    """`job_id` in `tenant`'s namespace: `{tenant}.{job_id}` (kept if already so).
    ValueError when it is qualified with another tenant."""
    check_token(tenant, field="tenant")
    owner = job_id_tenant(job_id)
    if owner is None:
        return f"{tenant}.{job_id}"
    if owner != tenant:
        raise ValueError(f"job_id {job_id!r} is tenant {owner}'s, not {tenant}'s")
    return job_id


def job_id_refusal(job_id: str, *, subject: str, claimed: str | None) -> str | None:
    """Why a job message may not take `job_id` (None: it may). A job on
    `jobs.submit.{tenant}` (a tenant's user: the server checked) must be named in that
    tenant's namespace, `{tenant}.{id}`; a trusted client's job on `jobs.submit` may be
    named in the namespace of the tenant it claims only. Else a tenant could create (and
    so read, or block) job ids of another tenant."""
    owner = job_id_tenant(job_id)
    prefix = JOBS_SUBJECT + "."
    if subject.startswith(prefix):
        tenant = subject.removeprefix(prefix)
        if owner != tenant:
            return (
                f"job id {job_id!r} submitted on {subject} is not in tenant {tenant}'s "
                f"namespace: name it {tenant}.ID"
            )
        return None
    if owner is not None and owner != claimed:
        return (
            f"job id {job_id!r} on {subject} is in tenant {owner}'s namespace but the job "
            f"claims tenant {claimed or 'default'}"
        )
    return None


def tenant_request_refusal(subject: str, job_id: str, *, base: str) -> str | None:
    """Why a request on `subject` (`base`, or `base.{tenant}` as a tenant) may not touch
    job `job_id` (None: it may): as a tenant, only that tenant's qualified job ids."""
    if subject == base:
        return None  # a trusted user (tenants' users may not publish here)
    tenant = subject.removeprefix(base + ".")
    if job_id_tenant(job_id) != tenant:
        return f"job {job_id} is not tenant {tenant}'s (asked on {subject})"
    return None


def job_state_subject(job_id: str) -> str:
    """`$KV.jobs.{job_id}`: the subject of a job's state in the `jobs` bucket."""
    return f"$KV.{JOBS_BUCKET}.{check_job_id(job_id)}"


def history_subject(job_id: str) -> str:
    """Where to ask a job's history: `rpc.history.{tenant}` for a tenant's job (the only
    one its users may ask on), else `rpc.history`."""
    tenant = job_id_tenant(job_id)
    return RPC_HISTORY if tenant is None else f"{RPC_HISTORY}.{tenant}"


def cancel_subject(job_id: str) -> str:
    """Where to cancel a job: `jobs.cancel.{tenant}` for a tenant's job, else `jobs.cancel`."""
    tenant = job_id_tenant(job_id)
    return JOBS_CANCEL if tenant is None else f"{JOBS_CANCEL}.{tenant}"


def task_assign(skill: str) -> str:
    return f"tasks.{check_token(skill, field='skill')}.assign"


def priority_task_assign(skill: str, priority: str) -> str:
    """`tasks.{skill}.assign.{priority}`: the tasks of high (or low) priority jobs."""
    return f"{task_assign(skill)}.{check_token(priority, field='priority')}"


def workers_consumer(skill: str) -> str:
    """Durable consumer shared by every worker replica of `skill` (normal priority)."""
    return f"{check_token(skill, field='skill')}-workers"


def priority_workers_consumer(skill: str, priority: str) -> str:
    """`{skill}-workers-{priority}`: the workers' consumer of one other priority."""
    return f"{workers_consumer(skill)}-{check_token(priority, field='priority')}"


def tenant_submit(tenant: str) -> str:
    """`jobs.submit.{tenant}`: where a client submits as `tenant`."""
    return f"{JOBS_SUBJECT}.{check_token(tenant, field='tenant')}"


def tenant_orchestrator_consumer(tenant: str) -> str:
    """`orchestrator-{tenant}`: the orchestrator's consumer of one tenant's jobs."""
    return f"{ORCHESTRATOR_CONSUMER}-{check_token(tenant, field='tenant')}"


def tenant_task_assign(skill: str, priority: str, tenant: str) -> str:
    """`tasks.{skill}.assign.{priority}.{tenant}`: the tasks of one configured tenant."""
    return f"{priority_task_assign(skill, priority)}.{check_token(tenant, field='tenant')}"


def tenant_workers_consumer(skill: str, priority: str, tenant: str) -> str:
    """`{skill}-workers-{priority}-{tenant}`: the workers' consumer of a tenant's tasks of
    one priority (its max_ack_pending is the tenant's cap of tasks in flight)."""
    return f"{priority_workers_consumer(skill, priority)}-{check_token(tenant, field='tenant')}"


def tenant_slots(skill: str, tenant: str, cap: int | str) -> str:
    """`tasks.{skill}.slots.{tenant}.{cap}`: the run permits of a capped tenant's tasks."""
    return (
        f"tasks.{check_token(skill, field='skill')}.slots.{check_token(tenant, field='tenant')}"
        f".{check_token(str(cap), field='cap')}"
    )


def tenant_slots_consumer(skill: str, tenant: str) -> str:
    """`{skill}-slots-{tenant}`: the workers' consumer of a capped tenant's run permits."""
    return f"{check_token(skill, field='skill')}-slots-{check_token(tenant, field='tenant')}"


def result_subject(job_id: str, task_id: str) -> str:
    return f"results.{check_job_id(job_id)}.{check_token(task_id, field='task_id')}"


def job_canceled(job_id: str) -> str:
    """`jobs.canceled.{job_id}`: the broadcast that a job was canceled (core NATS)."""
    return f"jobs.canceled.{check_job_id(job_id)}"


def job_results_wildcard(job_id: str) -> str:
    return f"results.{check_job_id(job_id)}.>"


def job_progress(job_id: str) -> str:
    """`progress.{job_id}`: the job's live partial results (PROGRESS stream)."""
    return f"progress.{check_job_id(job_id)}"


def agent_events(agent_id: str) -> str:
    return f"agent.{check_token(agent_id, field='agent_id')}.events"


def agent_results(agent_id: str) -> str:
    return f"agent.{check_token(agent_id, field='agent_id')}.results"


def agent_commands(agent_id: str) -> str:
    return f"agent.{check_token(agent_id, field='agent_id')}.commands"


def dlq_subject(source_stream: str) -> str:
    """Dead letters are filed by the stream they came from: `dlq.tasks`, `dlq.jobs`, ..."""
    return f"dlq.{check_token(source_stream.lower(), field='stream')}"


def rpc_subject(skill: str) -> str:
    """`rpc.{skill}`: the request/reply subject of a skill (`rpc.summarize`)."""
    return f"rpc.{check_token(skill, field='skill')}"


def rpc_queue(skill: str) -> str:
    """The queue group of a skill's workers (`summarize-workers`), shared with its consumer."""
    return workers_consumer(skill)


def srv_subject(verb: str, name: str | None = None, service_id: str | None = None) -> str:
    """`$SRV.{verb}`, `$SRV.{verb}.{name}` or `$SRV.{verb}.{name}.{id}` (nats.micro)."""
    parts = [SRV_PREFIX, verb.upper()]
    if name is not None:
        parts.append(name)
        if service_id is not None:
            parts.append(service_id)
    return ".".join(parts)
