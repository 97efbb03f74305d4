"""`agentrt bench fidelity`: a real-engine benchmark report, run again on the simulator; `agentrt
bench merge`: saved runs of one benchmark as one report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agentrt.cli.common import JsonOpt, bench_app, emit_json, err, out, user_errors


@bench_app.command("fidelity", epilog="Example: agentrt bench workflows -w swe_agent ... --save real.json; "
                                      "agentrt bench calibrate; agentrt bench fidelity real.json --sim cpu")
def bench_fidelity(
    report: Annotated[Path, typer.Argument(help="a `bench workflows --save` report of a real-engine run")],
    sim: Annotated[str, typer.Option("--sim", metavar="PROFILE", help="the step profile to check (cpu: the one "
                                                                       "`agentrt bench calibrate` wrote)")] = "cpu",
    save: Annotated[Path | None, typer.Option(help="also write the JSON object to this file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the report's programs on the simulated backend and print each policy's mean JCT beside the
    real engine's: the simulator's figures are worth reading only where these agree."""
    from agentrt.bench.fidelity import compare, render, render_steps, simulate_report, step_check
    with user_errors():
        if not report.is_file():
            raise ValueError(f"no such report: {report}")
        real = json.loads(report.read_text())
        if real.get("benchmark") != "workflows" or "policies" not in real:
            raise ValueError(f"{report} is not a `bench workflows` report")
        steps = step_check(real, sim)
        sim_figures = simulate_report(real, sim, lambda m: err.print(m, markup=False, soft_wrap=True))
    fid = {"profile": sim, "describe": real["describe"], **compare(real, sim_figures),
           "sim_figures": sim_figures, "steps": steps}
    if save:
        save.write_text(json.dumps(fid, indent=2) + "\n")
    if as_json:
        return emit_json(fid)
    out.print(render(fid, real["describe"], sim))
    if steps:
        out.print(render_steps(steps, sim))


@bench_app.command("merge", epilog="Example: agentrt bench merge run1.json run2.json run3.json --save median3.json")
def bench_merge(
    reports: Annotated[list[Path], typer.Argument(help="`bench workflows --save` reports of the same benchmark")],
    save: Annotated[Path | None, typer.Option(help="also write the merged report to this file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge saved runs of one benchmark into one report: medians over every run of each policy.

    For a median of 3 when one run takes hours: run the same command (same settings, same commit,
    same kind of machine; each report records its commit) at different times with `--runs 1 --save`,
    then merge. Reports that differ in any of those are refused, with what differs.
    """
    from agentrt.bench.workflow_report import merge_reports, render_table
    with user_errors():
        missing = [str(p) for p in reports if not p.is_file()]
        if missing:
            raise ValueError(f"no such report: {', '.join(missing)}")
        merged = merge_reports([json.loads(p.read_text()) for p in reports])
    if save:
        save.write_text(json.dumps(merged, indent=2) + "\n")
    if as_json:
        return emit_json(merged)
    out.print(render_table(merged))
