"""Errors of the gateway service."""

from __future__ import annotations

from agentbus.contract.errors import AgentBusError

__all__ = ["ApiKeysError", "GatewayError"]


class GatewayError(AgentBusError):
    """The gateway cannot serve as configured; the message names the setting."""


class ApiKeysError(GatewayError):
    """The API keys file is unreadable or invalid; the message names the file and entry."""
