"""`agentrt bench workflows --rates ... --sim ... --jobs N`: the rates of a simulated sweep in N
spawned processes at once (the simulator is deterministic, so the figures equal one process's)."""
from __future__ import annotations

import json
import multiprocessing
import signal
from pathlib import Path
from typing import Any

from agentrt.cli.common import err


def _sweep_rate(task: tuple[dict[str, Any], float, Path | None]) -> tuple[float, dict[str, Any]]:
    """One rate of a simulated sweep, in a worker process: its own harness, the same settings."""
    from agentrt.bench.workloads import workload_from_settings
    from agentrt.cli.bench_cmds import _load_harness, _report
    job, rate, timeline = task
    harness, device_tokens = _load_harness(**job["build"])
    settings = {**job["settings"], "rate": rate}
    return rate, _report("workflows", harness, workload_from_settings(settings), job["names"], job["runs"],
                         device_tokens, job["kv_host_tokens"], job["tier_fraction"], job["warmup"], settings, timeline)


def sweep_in_processes(job: dict[str, Any], sweep: list[float], timelines: list[Path | None],
                       jobs: int, save: Path | None) -> list[dict[str, Any]]:
    """Every rate of a simulated sweep, `jobs` at a time (spawned processes: no torch state shared).
    Ctrl-C or SIGTERM stops the workers too (the pool is terminated on the way out); with `save`,
    the rates done so far are written as each one ends, so a stopped sweep keeps them."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, stop)
    reports: dict[float, dict[str, Any]] = {}
    width = min(jobs, len(sweep))
    try:
        with multiprocessing.get_context("spawn").Pool(width) as pool:      # exiting terminates the workers
            err.print(f"[bold]{len(sweep)} rates, {width} at a time[/]")
            for r, report in pool.imap_unordered(_sweep_rate, [(job, r, t) for r, t in zip(sweep, timelines)]):
                reports[r] = report
                err.print(f"[bold]rate {r:g} programs/s done[/] ({len(reports)}/{len(sweep)})")
                if save:
                    done = [reports[x] for x in sweep if x in reports]
                    save.write_text(json.dumps({"sweep": done}, indent=2, default=str) + "\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [reports[r] for r in sweep]
