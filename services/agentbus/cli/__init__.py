"""The `agentbus` command: service entrypoints, the local stack and the client commands."""

from agentbus.cli.main import main

__all__ = ["main"]
