"""Workflow commands: `agentrt run` and `agentrt graph`."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentrt.cli.common import (DEFAULT_MODEL, EngineDTypeOpt, JsonOpt, KVDiskOpt, ModelOpt, WeightsOpt, app,
                                disk_options, emit_json, err, fail, load_engine, out, user_errors)

# The runtime (torch) and the DSL are imported inside the commands: `agentrt --help` needs neither.
if TYPE_CHECKING:
    from agentrt.graph import CompiledWorkflow
    from agentrt.runtime import ProgramResult

TargetArg = Annotated[str, typer.Argument(help="the workflow: path/to/file.py[:attr] or package.module:attr "
                                               "(attr defaults to `workflow`, or the file's only Workflow)")]
SHOWN_OUTPUTS = 3


def compiled_target(target: str) -> CompiledWorkflow:
    from agentrt.graph.target import load_workflow
    from agentrt.graph import WorkflowError
    try:
        return load_workflow(target)
    except WorkflowError as exc:           # every problem, one per line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except ValueError as exc:
        fail(str(exc))


def read_inputs(input_json: str | None, input_file: Path | None, copies: int) -> list[dict[str, Any]]:
    if input_json is not None and input_file is not None:
        fail("give --input or --input-file, not both")
    if input_file is not None:
        if not input_file.is_file():
            fail(f"no such input file: {input_file}")
        try:
            text = input_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {input_file}: {exc}")
        lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if not lines:
            fail(f"{input_file} has no inputs (one JSON object per line)")
        inputs = [_parse_object(ln, f"{input_file}:{i}") for i, ln in lines]
    else:
        inputs = [_parse_object(input_json, "--input") if input_json is not None else {}]
    return [x for x in inputs for _ in range(copies)]


def _parse_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{where} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        fail(f"{where} must be a JSON object of state fields, got {type(value).__name__}")
    return value


@app.command(epilog="Examples: agentrt run workflows/research_team.py · agentrt run workflows/map_reduce.py "
                    "-n 4 --trace run.jsonl · agentrt run workflows/research_team.py --input "
                    "'{\"topic\": \"honeybees\"}' --json · agentrt run my_pkg.flows:triage --input-file jobs.jsonl")
def run(
    target: TargetArg,
    input_json: Annotated[str | None, typer.Option("--input", "-i", help="the program's input: a JSON object of "
                                                                        "state fields (defaults fill the rest)")] = None,
    input_file: Annotated[Path | None, typer.Option("--input-file", help="one JSON object per line, one "
                                                                         "program each")] = None,
    copies: Annotated[int, typer.Option("-n", "--copies", min=1, help="run N copies of each input at once")] = 1,
    model: ModelOpt = DEFAULT_MODEL,
    dtype: EngineDTypeOpt = "auto",
    kv_cache_tokens: Annotated[int, typer.Option(help="KV cache size in tokens")] = 16384,
    weights: WeightsOpt = "auto",
    kv_disk_dir: KVDiskOpt = None,
    trace: Annotated[Path | None, typer.Option(help="write every event as JSON lines to this file")] = None,
    policy: Annotated[str, typer.Option(help="KV policy: agentrt, kvflow, continuum or lru "
                                             "(see `agentrt bench workflows`)")] = "agentrt",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (results and summary) to "
                                                         "stdout, nothing else")] = False,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", metavar="[DB]",
        help="make the run durable: save every program at every step in this SQLite file (alone: runs.db "
             "under the user's data dir); after a crash or a stop, `agentrt resume RUN_ID` continues it")] = None,
    events: Annotated[str | None, typer.Option(help="publish every event live to this MQTT broker "
                                                    "(mqtt://host:port); watch with `agentrt events`")] = None,
) -> None:
    """Run a workflow: one program per input, all at once on one engine.

    Shows progress on stderr, then a table per program (status, job completion time, steps,
    tokens, prefix-cache hit rate) and the output. Exit code 1 when a program failed,
    2 for bad usage (missing file, invalid workflow or input, unknown model), 143 when stopped
    by SIGTERM (a durable run's programs are saved: resume them).
    """
    from agentrt.cli.display import RunProgress
    from agentrt.runtime import summarize
    from agentrt.sched.policies import POLICIES
    if policy not in POLICIES:
        fail(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if events is not None:
        from agentrt.tools.mqtt.broker import BrokerURL
        with user_errors():
            BrokerURL.parse(events)
    workflow = compiled_target(target)
    inputs = read_inputs(input_json, input_file, copies)
    if trace is not None:                  # a bad path is a usage error, not a traceback mid-run
        try:
            trace.open("w").close()
        except OSError as exc:
            fail(f"cannot write the trace to {trace}: {exc.strerror or exc}")
    with user_errors():
        for x in inputs:
            workflow.initial_state(x)
        engine = load_engine(model, dtype=dtype, kv_cache_tokens=kv_cache_tokens, **disk_options(weights, kv_disk_dir))
    durable = None
    if checkpoint is not None:
        from agentrt.cli.durable_cmds import open_run
        durable = open_run(checkpoint, {"target": absolute_target(target), "model": model, "dtype": dtype,
                                        "kv_cache_tokens": kv_cache_tokens, "policy": policy})
    live = not as_json and err.is_terminal
    if not as_json:
        err.print(f"[dim]running {len(inputs)} × {workflow.name} on {model} ...[/]")
        if durable is not None:
            err.print(f"[dim]durable run {durable['run_id']} in {durable['checkpoint']}[/]")
    started = time.monotonic()
    with RunProgress(err, len(inputs), live) as progress:
        sinks = [] if as_json else [progress]
        results = run_until_stopped(_run_all(engine, workflow, inputs, trace, sinks, policy, durable, events), durable)
    summary = summarize(results, time.monotonic() - started)
    if durable is not None:
        summary["run_id"] = durable["run_id"]
    summary["engine"] = engine.stats()
    if as_json:
        emit_json({"workflow": workflow.name, "model": model, "summary": summary,
                   "programs": [r.to_dict() for r in results]})
    else:
        _print_results(workflow, results, summary, model)
    if summary["failed"]:
        raise typer.Exit(1)


async def _run_all(engine, workflow, inputs, trace, sinks, policy: str, durable: dict | None = None,
                   events: str | None = None) -> list[ProgramResult]:
    from agentrt.runtime import Runtime
    durability = {} if durable is None else {"checkpoint": durable["checkpoint"], "run_id": durable["run_id"],
                                             "run_meta": durable["meta"]}
    async with Runtime(engine, trace=trace, on_event=sinks, policy=policy, events=events, **durability) as rt:
        return await rt.run_many(workflow, inputs)


def absolute_target(target: str) -> str:
    """The target as a resume in another directory finds it: a file by its absolute path."""
    from agentrt.graph.target import _is_file, _split
    source, attr = _split(target)
    if not _is_file(source):
        return target
    return str(Path(source).resolve()) + (f":{attr}" if attr else "")


def run_until_stopped(main, durable: dict | None):
    """asyncio.run(main), where SIGTERM stops the programs (a durable run keeps them: exit 143)."""
    import signal

    async def guarded():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        hint = f"; resume with: agentrt resume {durable['run_id']} --checkpoint {durable['checkpoint']}" \
            if durable is not None else ""
        typer.echo(f"stopped by SIGTERM{hint}", err=True)
        raise typer.Exit(143)


def _print_results(workflow: CompiledWorkflow, results: list[ProgramResult], summary: dict, model: str) -> None:
    from agentrt.cli.display import output_panel, results_table, summary_line
    for r in results[:SHOWN_OUTPUTS]:
        out.print(output_panel(r, workflow.output))
    if len(results) > SHOWN_OUTPUTS:
        out.print(f"[dim]({len(results) - SHOWN_OUTPUTS} more outputs: use --json)[/]")
    out.print(results_table(results, f"agentrt run {workflow.name} · {model}"))
    out.print(summary_line(summary))


@app.command(epilog="Examples: agentrt graph workflows/research_team.py · agentrt graph "
                    "workflows/coding_agent.py --png coding.png · agentrt graph workflows/map_reduce.py --json")
def graph(
    target: TargetArg,
    png: Annotated[Path | None, typer.Option(help="draw the step graph to this PNG file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a workflow's step graph: its steps, edges, and how far each agent is from the start."""
    from agentrt.cli.graph_view import describe, draw_png
    workflow = compiled_target(target)
    if png is not None:
        with user_errors():
            draw_png(workflow, png)
        err.print(f"wrote {png}")
    info = describe(workflow)
    if as_json:
        return emit_json(info)
    if png is None or sys.stdout.isatty():
        from agentrt.cli.graph_view import render_text
        out.print(render_text(workflow, info))
