"""`agentrt bench fidelity`: a real-engine benchmark report, run again on the simulator."""
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
    from agentrt.bench.fidelity import compare, render, simulate_report
    with user_errors():
        if not report.is_file():
            raise ValueError(f"no such report: {report}")
        real = json.loads(report.read_text())
        if real.get("benchmark") != "workflows" or "policies" not in real:
            raise ValueError(f"{report} is not a `bench workflows` report")
        sim_figures = simulate_report(real, sim, lambda m: err.print(m, markup=False, soft_wrap=True))
    fid = {"profile": sim, "describe": real["describe"], **compare(real, sim_figures),
           "sim_figures": sim_figures}
    if save:
        save.write_text(json.dumps(fid, indent=2) + "\n")
    if as_json:
        return emit_json(fid)
    out.print(render(fid, real["describe"], sim))
