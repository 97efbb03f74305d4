"""The `agentrt` command line: run, graph, models, generate, demo, bench."""
from __future__ import annotations

import sys

import typer

from agentrt.cli import bench_cmds, cluster_cmds, durable_cmds, engine_cmds, fidelity_cmds, run_cmds, serve_bench_cmds, serve_cmds, worker_cmds  # noqa: F401,E501  (they register their commands)
from agentrt.cli.common import app

__all__ = ["app", "main"]


OPTIONAL_VALUE = {"--checkpoint": ""}      # options whose value may be left out: what stands in for it


def with_optional_values(argv: list[str]) -> list[str]:
    """`--checkpoint` given alone (last, or before another option) gets its stand-in value."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        if token in OPTIONAL_VALUE and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUE[token])
    return out


def main() -> None:
    try:
        app(args=with_optional_values(sys.argv[1:]))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
