"""The orchestrator service: job intake, chunking, fan-out, collection, reduce, job state."""

from orchestrator.errors import OrchestratorError
from orchestrator.service import Orchestrator, task_id_for

__all__ = ["Orchestrator", "OrchestratorError", "task_id_for"]
