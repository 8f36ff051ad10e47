"""The exception hierarchy of the shared core: every error raised by `agentbus` is an
`AgentBusError`, and its message names the subject, field or setting involved."""

from __future__ import annotations

__all__ = [
    "AgentBusError",
    "ConfigError",
    "DocumentRejected",
    "JobExistsError",
    "JobFailed",
    "MessageDecodeError",
    "NatsServerError",
    "TopologyError",
]


class AgentBusError(Exception):
    """Base of every error raised by the agentbus core."""


class ConfigError(AgentBusError):
    """Invalid settings; the message names the setting (`AGENTBUS_...`)."""


class MessageDecodeError(AgentBusError):
    """A message on the bus could not be decoded into its model."""


class DocumentRejected(AgentBusError):
    """A document refused at intake (empty, not UTF-8 text, above the size cap)."""


class JobExistsError(AgentBusError):
    """A job id submitted again with a different document (a job id names one document)."""


class JobFailed(AgentBusError):
    """A job ended in the `failed` state; the message carries its reason."""


class TopologyError(AgentBusError):
    """Streams, consumers or buckets could not be provisioned."""


class NatsServerError(AgentBusError):
    """The embedded nats-server could not be found, started or stopped."""
