"""The exception hierarchy of the shared core: every error raised by `agentbus` is an
`AgentBusError`, and its message names the subject, field or setting involved."""

from __future__ import annotations

__all__ = [
    "AgentBusError",
    "BusError",
    "ConfigError",
    "DeadLetterError",
    "DocumentRejected",
    "JobExistsError",
    "JobFailed",
    "MessageDecodeError",
    "NatsServerError",
    "NoStreamError",
    "PermissionsError",
    "PullError",
    "RpcError",
    "SkillError",
    "StackError",
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


class BusError(AgentBusError):
    """A NATS operation failed; the message names the subject or stream."""


class NoStreamError(BusError):
    """No JetStream stream takes the subject published on (a missing topology, or the
    submit subject of a tenant that is not configured)."""


class RpcError(AgentBusError):
    """A request/reply call failed: no responders, no reply in time, or the worker's error."""


class PullError(AgentBusError):
    """The consumer refused a pull request (deleted, JetStream unavailable, ...)."""


class DeadLetterError(AgentBusError):
    """A dead letter could not be read or replayed; the message names its ID."""


class StackError(AgentBusError):
    """A process of the local stack failed to start or become ready."""


class PermissionsError(AgentBusError):
    """Permissions could not be rendered (unknown user, unsafe credential value)."""


class SkillError(AgentBusError):
    """A skill failed; `retryable=False` sends the task to the DLQ at once."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
