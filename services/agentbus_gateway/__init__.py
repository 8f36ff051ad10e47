"""The gateway service: the HTTP front door to agentbus (REST/SSE, the web console)."""

from agentbus_gateway.errors import ApiKeysError, GatewayError
from agentbus_gateway.service import Gateway

__all__ = ["ApiKeysError", "Gateway", "GatewayError"]
