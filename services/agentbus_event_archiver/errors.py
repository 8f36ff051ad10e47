"""Errors of the event-archiver service."""

from __future__ import annotations

from agentbus.contract.errors import AgentBusError

__all__ = ["ArchiveError"]


class ArchiveError(AgentBusError):
    """The archive database could not be opened, written or queried; names the URL or table."""
