"""Prometheus metrics of every agentbus service (prefix `agentbus_`).

Labels are bounded: service, skill, stream, outcome, state — never a raw subject or id.
One process runs one service, so the default registry is used.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, Info

__all__ = [
    "ARCHIVE_COMMIT_SECONDS",
    "BUILD_INFO",
    "DEAD_LETTERS",
    "EVENTS_ARCHIVED",
    "EVENTS_EMITTED",
    "JOBS_COMPLETED",
    "JOBS_FAILED",
    "JOBS_SUBMITTED",
    "JOB_SECONDS",
    "MESSAGES_PUBLISHED",
    "MESSAGES_REJECTED",
    "NATS_CONNECTED",
    "NATS_RECONNECTS",
    "REDELIVERIES",
    "SUMMARIZER_TOKENS",
    "TASKS_PROCESSED",
    "TASK_SECONDS",
    "WORKER_FREE_SLOTS",
    "WORKER_IN_FLIGHT",
]

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip

BUILD_INFO: Final = Info("agentbus_build", "agentbus version and service")

JOBS_SUBMITTED: Final = Counter(
    "agentbus_jobs_submitted_total", "Jobs accepted by the orchestrator", ["service"]
)
JOBS_COMPLETED: Final = Counter(
    "agentbus_jobs_completed_total", "Jobs whose final summary was written", ["service"]
)
JOBS_FAILED: Final = Counter(
    "agentbus_jobs_failed_total", "Jobs marked failed", ["service", "reason"]
)
JOB_SECONDS: Final = Histogram(
    "agentbus_job_duration_seconds",
    "From acceptance to final summary",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)
TASKS_PROCESSED: Final = Counter(
    "agentbus_tasks_processed_total",
    "Tasks handled by workers, by outcome (ok, retried, dead_lettered, rejected)",
    ["service", "skill", "outcome"],
)
TASK_SECONDS: Final = Histogram(
    "agentbus_task_duration_seconds",
    "Time to run one task's skill",
    ["service", "skill"],
    buckets=_LATENCY_BUCKETS,
)
WORKER_IN_FLIGHT: Final = Gauge(
    "agentbus_worker_in_flight", "Messages being handled now", ["service", "consumer"]
)
WORKER_FREE_SLOTS: Final = Gauge(
    "agentbus_worker_free_slots", "Free handler slots", ["service", "consumer"]
)
REDELIVERIES: Final = Counter(
    "agentbus_redeliveries_total",
    "Messages received with a delivery count above 1",
    ["service", "stream"],
)
DEAD_LETTERS: Final = Counter(
    "agentbus_dead_letters_total", "Messages moved to the DLQ", ["service", "stream", "reason"]
)
MESSAGES_REJECTED: Final = Counter(
    "agentbus_messages_rejected_total",
    "Messages that could not be decoded (terminated and dead-lettered)",
    ["service", "stream"],
)
MESSAGES_PUBLISHED: Final = Counter(
    "agentbus_messages_published_total", "JetStream publishes acknowledged", ["service", "stream"]
)
EVENTS_EMITTED: Final = Counter(
    "agentbus_events_emitted_total", "Agent events published", ["service"]
)
EVENTS_ARCHIVED: Final = Counter(
    "agentbus_events_archived_total",
    "Events written to the archive (duplicates skipped are outcome=duplicate)",
    ["service", "outcome"],
)
ARCHIVE_COMMIT_SECONDS: Final = Histogram(
    "agentbus_archive_commit_seconds",
    "Latency of one archive batch commit",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)
NATS_CONNECTED: Final = Gauge("agentbus_nats_connected", "1 while connected to NATS", ["service"])
NATS_RECONNECTS: Final = Counter(
    "agentbus_nats_reconnects_total", "Reconnections to NATS", ["service"]
)
SUMMARIZER_TOKENS: Final = Counter(
    "agentbus_summarizer_tokens_total",
    "Tokens reported by the summarizer backend",
    ["service", "backend", "kind"],
)
