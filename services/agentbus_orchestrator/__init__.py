"""The orchestrator service: job intake, chunking, fan-out, collection, reduce, job state."""

from agentbus_orchestrator.errors import OrchestratorError
from agentbus_orchestrator.service import Orchestrator, task_id_for

__all__ = ["Orchestrator", "OrchestratorError", "task_id_for"]
