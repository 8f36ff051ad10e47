"""The client library: submit documents, wait for and watch jobs, read their history,
call skills by request/reply. Imports the contract, observability and the bus."""

from agentbus.client.api import AgentBusClient

__all__ = ["AgentBusClient"]
