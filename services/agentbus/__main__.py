"""`python -m agentbus` is the `agentbus` command."""

from agentbus.cli.main import main

main()
