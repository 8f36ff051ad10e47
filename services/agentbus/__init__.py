"""agentbus: a Kubernetes-deployable multi-agent summarization pipeline on NATS JetStream.

The shared core: settings, message models, subjects and topology, the bus, telemetry,
the health server, the client library, the embedded nats-server and the CLI.
"""

from agentbus.bus import BatchConsumerLoop, Bus, BusError, ConsumerLoop
from agentbus.client import AgentBusClient
from agentbus.embedded import EmbeddedNatsServer
from agentbus.errors import (
    AgentBusError,
    ConfigError,
    DocumentRejected,
    JobFailed,
    MessageDecodeError,
    NatsServerError,
    TopologyError,
)
from agentbus.messages import (
    AgentEvent,
    EventKind,
    JobState,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
)
from agentbus.service import AgentService, run_service
from agentbus.settings import Settings, load_settings
from agentbus.topology import provision
from agentbus.worker import Skill, SkillError, SkillOutput, TaskWorker

__all__ = [
    "AgentBusClient",
    "AgentBusError",
    "AgentEvent",
    "AgentService",
    "BatchConsumerLoop",
    "Bus",
    "BusError",
    "ConfigError",
    "ConsumerLoop",
    "DocumentRejected",
    "EmbeddedNatsServer",
    "EventKind",
    "JobFailed",
    "JobState",
    "JobStatus",
    "JobSubmit",
    "MessageDecodeError",
    "NatsServerError",
    "Settings",
    "Skill",
    "SkillError",
    "SkillOutput",
    "TaskAssign",
    "TaskResult",
    "TaskWorker",
    "TopologyError",
    "load_settings",
    "provision",
    "run_service",
]
