"""The `agentrt` command line: run, graph, models, generate, demo, bench."""
from __future__ import annotations

import sys

import typer

from agentrt.cli import bench_cmds, engine_cmds, run_cmds, serve_bench_cmds, serve_cmds  # noqa: F401  (they register their commands)
from agentrt.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
