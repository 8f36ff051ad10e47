"""agentbus: a Kubernetes-deployable multi-agent summarization pipeline on NATS JetStream.

The shared core, in layers that import only downward:

    contract       subjects, headers, messages, permissions, asyncapi, errors, settings
    observability  metrics, tracing, logs, health
    bus            connect, Bus, consumer loops, publisher, emitter, dead letters, topology
    runtime        service lifecycle, task worker and skills, rpc endpoint    client
    cli            the `agentbus` command
    dev            embedded nats-server, local stack (dev-only: no service imports it)
"""

from agentbus.bus.consume import BatchConsumerLoop, ConsumerLoop
from agentbus.bus.core import Bus
from agentbus.bus.topology import provision
from agentbus.client.api import AgentBusClient
from agentbus.contract.errors import (
    AgentBusError,
    BusError,
    ConfigError,
    DocumentRejected,
    JobFailed,
    MessageDecodeError,
    NatsServerError,
    SkillError,
    TopologyError,
)
from agentbus.contract.messages import (
    AgentEvent,
    EventKind,
    JobState,
    JobStatus,
    JobSubmit,
    TaskAssign,
    TaskResult,
)
from agentbus.contract.settings import Settings, load_settings
from agentbus.runtime.service import AgentService, run_service
from agentbus.runtime.worker import Skill, SkillOutput, TaskWorker

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
