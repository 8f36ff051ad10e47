"""`python -m agentbus` is the `agentbus` command."""

from agentbus.cli import main

main()
