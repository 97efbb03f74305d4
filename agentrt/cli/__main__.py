"""`python -m agentrt.cli` is the `agentrt` command."""
from agentrt.cli import main

if __name__ == "__main__":          # not when a spawned worker (bench workflows --jobs) imports it
    main()
