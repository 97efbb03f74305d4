"""`python -m agentrt.cli` is the `agentrt` command."""
from agentrt.cli import main

main()
