"""Errors of the orchestrator service."""

from __future__ import annotations

from agentbus.contract.errors import AgentBusError

__all__ = ["OrchestratorError"]


class OrchestratorError(AgentBusError):
    """A job or result could not be processed; the message names the job."""
