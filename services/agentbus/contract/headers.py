"""Every NATS header name agentbus reads or writes, in one place."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DLQ_HEADER_DELIVERIES",
    "DLQ_HEADER_MSG_ID",
    "DLQ_HEADER_PREFIX",
    "DLQ_HEADER_REASON",
    "DLQ_HEADER_SEQ",
    "DLQ_HEADER_STREAM",
    "DLQ_HEADER_SUBJECT",
    "DLQ_HEADER_TRUNCATED",
    "MSG_ID_HEADER",
    "NOT_BEFORE_HEADER",
    "REPLAY_OF_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
]

MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""JetStream's deduplication id: every publish carries one."""

TRACEPARENT_HEADER: Final = "traceparent"
TRACESTATE_HEADER: Final = "tracestate"
"""W3C trace context, carried from the client's submit through every hop."""

DLQ_HEADER_PREFIX: Final = "Agentbus-Dlq-"
"""Every header a dead letter gains starts with this (a replay strips them)."""
DLQ_HEADER_REASON: Final = "Agentbus-Dlq-Reason"
DLQ_HEADER_STREAM: Final = "Agentbus-Dlq-Stream"
DLQ_HEADER_SUBJECT: Final = "Agentbus-Dlq-Subject"
DLQ_HEADER_SEQ: Final = "Agentbus-Dlq-Seq"
DLQ_HEADER_DELIVERIES: Final = "Agentbus-Dlq-Deliveries"
DLQ_HEADER_MSG_ID: Final = "Agentbus-Dlq-Msg-Id"
"""The original `Nats-Msg-Id` (the dead letter itself gets a DLQ-specific one)."""
DLQ_HEADER_TRUNCATED: Final = "Agentbus-Dlq-Truncated"
"""Set (to the original size) when a dead letter's payload had to be cut to fit."""
REPLAY_OF_HEADER: Final = "Agentbus-Replay-Of"
"""On a replayed dead letter: the DLQ sequence it came from."""
NOT_BEFORE_HEADER: Final = "Agentbus-Not-Before"
"""On a job held back by its tenant's rate or budget (published again by the
orchestrator): the Unix time before which it is not taken in."""
