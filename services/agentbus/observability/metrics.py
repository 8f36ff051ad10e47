"""Prometheus metrics of every agentbus service (prefix `agentbus_`).

Labels are bounded: service, skill, stream, consumer (a durable name), outcome, and small
fixed sets of reasons -- never a raw subject, a job/task/agent id or free text. One
process runs one service, so the default registry is used.

Counters whose label values are known up front are created at start-up (`init_*`), so a
dashboard's `rate(...)` shows 0 rather than "no data" before the first failure.

Consumer lag, DLQ depth and per-consumer redelivery counts come from the NATS exporter
(`nats_consumer_num_pending`, `nats_stream_total_messages`, ...), not from here.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, Info

__all__ = [
    "ARCHIVE_COMMIT_SECONDS",
    "ARCHIVE_LAG_SECONDS",
    "BUILD_INFO",
    "DEAD_LETTERS",
    "DEAD_LETTER_REASONS",
    "EVENTS_ARCHIVED",
    "EVENTS_EMITTED",
    "EVENT_MESSAGES",
    "GATEWAY_OPEN_STREAMS",
    "GATEWAY_REQUESTS",
    "GATEWAY_REQUEST_SECONDS",
    "HANDLER_ERRORS",
    "JOBS_CANCELED",
    "JOBS_COMPLETED",
    "JOBS_FAILED",
    "JOBS_SUBMITTED",
    "JOB_FAILURE_REASONS",
    "JOB_SECONDS",
    "JOB_STATE_CONFLICTS",
    "JOB_STATE_WRITES",
    "MESSAGES_PUBLISHED",
    "MESSAGES_REJECTED",
    "NATS_CONNECTED",
    "NATS_PERMISSION_VIOLATIONS",
    "NATS_RECONNECTS",
    "REDELIVERIES",
    "RESULTS_RECORDED",
    "RESULT_OUTCOMES",
    "RPC_REQUESTS",
    "RPC_SECONDS",
    "SUMMARIZER_TOKENS",
    "TASKS_CANCELED",
    "TASKS_PROCESSED",
    "TASKS_PULLED",
    "TASK_CANCEL_OUTCOMES",
    "TASK_OUTCOMES",
    "TASK_SECONDS",
    "TENANT_JOBS",
    "TENANT_TASKS_PULLED",
    "TENANT_TOKENS",
    "TENANT_TOKENS_WINDOW",
    "TENANT_TOKEN_BUDGET",
    "WORKER_FREE_SLOTS",
    "WORKER_IN_FLIGHT",
    "dead_letter_reason",
    "init_archiver",
    "init_consumer",
    "init_gateway",
    "init_orchestrator",
    "init_worker",
]

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip

TASK_OUTCOMES: Final = ("ok", "retried", "dead_lettered", "rejected")
JOB_FAILURE_REASONS: Final = ("intake", "rejected", "task", "timeout")
DEAD_LETTER_REASONS: Final = ("undecodable", "max_deliver", "failed", "rejected")

BUILD_INFO: Final = Info("agentbus_build", "agentbus version and service (value is always 1)")

# --- jobs (orchestrator) -------------------------------------------------------------
JOBS_SUBMITTED: Final = Counter(
    "agentbus_jobs_submitted_total", "Jobs accepted by the orchestrator", ["service"]
)
JOBS_COMPLETED: Final = Counter(
    "agentbus_jobs_completed_total", "Jobs whose final summary was written", ["service"]
)
JOBS_FAILED: Final = Counter(
    "agentbus_jobs_failed_total",
    "Jobs marked failed, by reason (intake, rejected, task, timeout)",
    ["service", "reason"],
)
JOBS_CANCELED: Final = Counter(
    "agentbus_jobs_canceled_total", "Jobs canceled on request (AgentBusClient.cancel)", ["service"]
)
JOB_SECONDS: Final = Histogram(
    "agentbus_job_duration_seconds",
    "From acceptance to final summary",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)

RESULT_OUTCOMES: Final = ("recorded", "duplicate", "ahead", "invalid", "failed")
RESULTS_RECORDED: Final = Counter(
    "agentbus_results_collected_total",
    "Task results the orchestrator handled, by what the job state made of them",
    ["service", "outcome"],
)
JOB_STATE_WRITES: Final = Counter(
    "agentbus_job_state_writes_total",
    "Compare-and-set writes of job state that landed (results of one job share one)",
    ["service"],
)
JOB_STATE_CONFLICTS: Final = Counter(
    "agentbus_job_state_conflicts_total",
    "Job state writes that found the state changed under them (then retried)",
    ["service"],
)

# --- request/reply (workers) --------------------------------------------------------
RPC_REQUESTS: Final = Counter(
    "agentbus_rpc_requests_total",
    "Request/reply calls served by workers, by outcome (ok, error, rejected)",
    ["service", "skill", "outcome"],
)
RPC_SECONDS: Final = Histogram(
    "agentbus_rpc_duration_seconds",
    "Time to serve one request/reply call",
    ["service", "skill"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# --- tasks (workers) -----------------------------------------------------------------
TASKS_PROCESSED: Final = Counter(
    "agentbus_tasks_processed_total",
    "Tasks handled by workers, by outcome (ok, retried, dead_lettered, rejected)",
    ["service", "skill", "outcome"],
)
TASK_CANCEL_OUTCOMES: Final = ("dropped", "interrupted")
TASKS_CANCELED: Final = Counter(
    "agentbus_tasks_canceled_total",
    "Tasks of canceled jobs, by outcome: dropped (pulled from the queue, acked without "
    "running) or interrupted (running, its coroutine cancelled)",
    ["service", "skill", "outcome"],
)
TASK_SECONDS: Final = Histogram(
    "agentbus_task_duration_seconds",
    "Time to run one task's skill",
    ["service", "skill"],
    buckets=_LATENCY_BUCKETS,
)
SUMMARIZER_TOKENS: Final = Counter(
    "agentbus_summarizer_tokens_total",
    "Tokens reported by the summarizer backend (kind: prompt, completion)",
    ["service", "backend", "kind"],
)

# --- consumers (every service) -------------------------------------------------------
WORKER_IN_FLIGHT: Final = Gauge(
    "agentbus_worker_in_flight", "Messages being handled now", ["service", "consumer"]
)
WORKER_FREE_SLOTS: Final = Gauge(
    "agentbus_worker_free_slots", "Free handler slots", ["service", "consumer"]
)
TASKS_PULLED: Final = Counter(
    "agentbus_tasks_pulled_total",
    "Tasks a worker pulled, by the priority of their consumer (high, normal, low)",
    ["service", "priority"],
)
# Tenants: the label is a configured tenant or `default` (a bounded set, by construction:
# `agentbus.contract.tenants.resolve`). Queue per tenant: the NATS exporter's
# `nats_consumer_num_pending` of `{skill}-workers-{priority}-{tenant}`.
TENANT_TASKS_PULLED: Final = Counter(
    "agentbus_tenant_tasks_pulled_total",
    "Tasks a worker pulled, by tenant (fair share by weight)",
    ["service", "tenant"],
)
TENANT_JOBS: Final = Counter(
    "agentbus_tenant_jobs_total",
    "Jobs at intake by tenant and outcome (accepted, refused_rate, queued_rate, "
    "waiting_budget, failed_budget)",
    ["service", "tenant", "outcome"],
)
TENANT_TOKENS: Final = Counter(
    "agentbus_tenant_tokens_total",
    "LLM tokens (prompt + completion) counted against a tenant's budget",
    ["service", "tenant"],
)
TENANT_TOKENS_WINDOW: Final = Gauge(
    "agentbus_tenant_tokens_window",
    "Tokens a tenant used in its current budget window (shared counter, last seen)",
    ["service", "tenant"],
)
TENANT_TOKEN_BUDGET: Final = Gauge(
    "agentbus_tenant_token_budget",
    "A tenant's token budget per window (absent: no budget)",
    ["service", "tenant"],
)
REDELIVERIES: Final = Counter(
    "agentbus_redeliveries_total",
    "Messages received with a delivery count above 1",
    ["service", "stream"],
)
NATS_PERMISSION_VIOLATIONS: Final = Counter(
    "agentbus_nats_permission_violations_total",
    "Operations the server refused for this service's NATS user",
    ["service"],
)
HANDLER_ERRORS: Final = Counter(
    "agentbus_handler_errors_total",
    "Unexpected handler exceptions (the message is nak'ed and retried)",
    ["service", "consumer"],
)
DEAD_LETTERS: Final = Counter(
    "agentbus_dead_letters_total",
    "Messages moved to the DLQ, by source stream and reason "
    "(undecodable, max_deliver, failed, rejected)",
    ["service", "stream", "reason"],
)
MESSAGES_REJECTED: Final = Counter(
    "agentbus_messages_rejected_total",
    "Messages that could not be decoded (terminated and dead-lettered)",
    ["service", "stream"],
)

# --- publishing and the connection ---------------------------------------------------
MESSAGES_PUBLISHED: Final = Counter(
    "agentbus_messages_published_total", "JetStream publishes acknowledged", ["service", "stream"]
)
EVENTS_EMITTED: Final = Counter(
    "agentbus_events_emitted_total", "Agent events published", ["service"]
)
EVENT_MESSAGES: Final = Counter(
    "agentbus_event_messages_total",
    "AGENT_EVENTS messages published (events emitted side by side share one)",
    ["service"],
)
NATS_CONNECTED: Final = Gauge("agentbus_nats_connected", "1 while connected to NATS", ["service"])
NATS_RECONNECTS: Final = Counter(
    "agentbus_nats_reconnects_total", "Reconnections to NATS", ["service"]
)

# --- archive (event-archiver) --------------------------------------------------------
EVENTS_ARCHIVED: Final = Counter(
    "agentbus_events_archived_total",
    "Events committed to the archive (a redelivered duplicate is skipped by the database)",
    ["service", "outcome"],
)
ARCHIVE_COMMIT_SECONDS: Final = Histogram(
    "agentbus_archive_commit_seconds",
    "Latency of one archive batch commit",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)
ARCHIVE_LAG_SECONDS: Final = Histogram(
    "agentbus_archive_lag_seconds",
    "From an event's timestamp to its archive commit",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)

# --- the HTTP front door (gateway) ----------------------------------------------------
# `route` is the route's pattern (`/v1/jobs/{id}`), never a raw path
GATEWAY_REQUESTS: Final = Counter(
    "agentbus_gateway_requests_total",
    "HTTP requests answered by the gateway",
    ["service", "route", "method", "code"],
)
GATEWAY_REQUEST_SECONDS: Final = Histogram(
    "agentbus_gateway_request_seconds",
    "Time to answer an HTTP request (a stream: until its headers are sent)",
    ["service", "route"],
    buckets=_LATENCY_BUCKETS,
)
GATEWAY_OPEN_STREAMS: Final = Gauge(
    "agentbus_gateway_open_streams",
    "Server-sent event streams open now (REST job streams and A2A)",
    ["service", "api"],
)


def dead_letter_reason(reason: str) -> str:
    """The bounded label value of a free-text dead-letter reason: undecodable (garbage),
    max_deliver (delivered too often), failed (a task that kept failing), rejected (any
    other refusal, e.g. a document that is empty, not text or too large)."""
    text = reason.lower()
    if text.startswith("undecodable"):
        return "undecodable"
    if "max_deliver" in text:
        return "max_deliver"
    if text.startswith("failed"):
        return "failed"
    return "rejected"


def init_consumer(service: str, *, stream: str, consumer: str) -> None:
    """Create the series of one consumer loop at 0."""
    REDELIVERIES.labels(service, stream)
    HANDLER_ERRORS.labels(service, consumer)
    MESSAGES_REJECTED.labels(service, stream)
    for reason in DEAD_LETTER_REASONS:
        DEAD_LETTERS.labels(service, stream, reason)


def init_orchestrator(service: str) -> None:
    JOBS_SUBMITTED.labels(service)
    JOBS_COMPLETED.labels(service)
    JOBS_CANCELED.labels(service)
    JOB_SECONDS.labels(service)
    JOB_STATE_WRITES.labels(service)
    JOB_STATE_CONFLICTS.labels(service)
    for outcome in RESULT_OUTCOMES:
        RESULTS_RECORDED.labels(service, outcome)
    for reason in JOB_FAILURE_REASONS:
        JOBS_FAILED.labels(service, reason)


def init_worker(service: str, *, skill: str, backend: str) -> None:
    TASK_SECONDS.labels(service, skill)
    for outcome in TASK_OUTCOMES:
        TASKS_PROCESSED.labels(service, skill, outcome)
    for outcome in TASK_CANCEL_OUTCOMES:
        TASKS_CANCELED.labels(service, skill, outcome)
    for kind in ("prompt", "completion"):
        SUMMARIZER_TOKENS.labels(service, backend, kind)


def init_archiver(service: str) -> None:
    EVENTS_ARCHIVED.labels(service, "stored")
    ARCHIVE_COMMIT_SECONDS.labels(service)
    ARCHIVE_LAG_SECONDS.labels(service)


def init_gateway(service: str) -> None:
    for api in ("rest", "a2a"):
        GATEWAY_OPEN_STREAMS.labels(service, api)
