"""Durable runs on the command line: `agentrt resume RUN_ID` and `agentrt runs list|show`.

A run started with `agentrt run FILE.py --checkpoint [DB]` is saved at every step; these commands
find it again in the same SQLite file (default: runs.db under the user's data dir).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from agentrt.cli.common import JsonOpt, app, emit_json, err, fail, load_engine, out, user_errors

runs_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                       help="Durable runs saved by `agentrt run --checkpoint`: list them, show one.",
                       epilog="Examples: agentrt runs list · agentrt runs show run-20261201-101500-3fa2c1 --json")
app.add_typer(runs_app, name="runs")

CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="the SQLite file of the runs "
                                                                        "(default: runs.db under the user's data dir)")]


def db_path(checkpoint: str | Path | None) -> Path:
    from agentrt.runtime.checkpoint import default_path
    return Path(checkpoint) if checkpoint else default_path()


def open_run(checkpoint: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A new durable run's settings for `agentrt run --checkpoint`."""
    from agentrt.runtime.checkpoint import new_run_id
    path = db_path(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create {path.parent} for the checkpoint: {exc.strerror or exc}")
    return {"checkpoint": str(path), "run_id": new_run_id(), "meta": meta}


def _store(checkpoint: Path | None):
    from agentrt.runtime.checkpoint import CheckpointStore
    path = db_path(checkpoint)
    if not path.is_file():
        fail(f"no checkpoint database at {path} (start a run with `agentrt run FILE.py --checkpoint {path}`)")
    return CheckpointStore(path)


@app.command(epilog="Examples: agentrt resume run-20261201-101500-3fa2c1 · agentrt resume RUN_ID --checkpoint "
                    "runs.db --json")
def resume(
    run_id: Annotated[str, typer.Argument(help="the run, as `agentrt run --checkpoint` printed it (see `agentrt runs list`)")],
    checkpoint: CheckpointOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="default: the model the run started on")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue a durable run: unfinished programs go on from their last finished step (no finished
    step or tool call is made again); finished ones are reported as they ended.

    Refused when the workflow file changed since the run started (the message says what changed).
    Exit code 1 when a program failed, 143 when stopped by SIGTERM (resume again).
    """
    from agentrt.cli.run_cmds import _print_results, run_until_stopped
    from agentrt.runtime import summarize
    store = _store(checkpoint)
    meta = store.run_meta(run_id)
    if meta is None:
        fail(f"no run {run_id!r} in {store.path} (`agentrt runs list` shows the runs there)")
    model = model or meta.get("model", "smollm2-135m")
    with user_errors():
        engine = load_engine(model, dtype=meta.get("dtype", "auto"), kv_cache_tokens=meta.get("kv_cache_tokens", 16384))
    durable = {"checkpoint": str(store.path), "run_id": run_id}
    started = time.monotonic()
    with user_errors():
        results = run_until_stopped(_resume(engine, store, run_id, meta.get("policy", "agentrt")), durable)
    summary = summarize(results, time.monotonic() - started)
    summary["run_id"] = run_id
    if as_json:
        emit_json({"run_id": run_id, "summary": summary, "programs": [r.to_dict() for r in results]})
    else:
        from agentrt.graph.target import load_workflow
        _print_results(load_workflow(meta["target"]), results, summary, model)
    if summary["failed"]:
        raise typer.Exit(1)


async def _resume(engine, store, run_id: str, policy: str):
    from agentrt.runtime import Runtime
    async with Runtime(engine, checkpoint=store, policy=policy) as rt:
        return await rt.resume(run_id)


@runs_app.command("list")
def runs_list(checkpoint: CheckpointOpt = None, as_json: JsonOpt = False) -> None:
    """The runs in the database, newest first, with their programs by status."""
    runs = _store(checkpoint).runs()
    if as_json:
        return emit_json(runs)
    from rich.table import Table
    table = Table("run", "started", "workflow target", "programs", title=f"runs in {db_path(checkpoint)}",
                  title_justify="left")
    for r in runs:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(r["programs"].items())) or "none"
        table.add_row(r["run_id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
                      str(r["meta"].get("target", "")), counts)
    out.print(table)


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="the run to show")], checkpoint: CheckpointOpt = None,
              as_json: JsonOpt = False) -> None:
    """A run's programs: status, the step each reached, time so far, error."""
    store = _store(checkpoint)
    programs = store.programs(run_id)
    if not programs:
        fail(f"no run {run_id!r} in {store.path} (`agentrt runs list` shows the runs there)")
    rows = [{"program": p.program_id, "workflow": p.workflow, "status": p.status, "steps": p.steps,
             "at": _where(p.snapshot["position"]), "elapsed_s": round(p.updated - p.started, 3), "error": p.error}
            for p in programs]
    if as_json:
        return emit_json({"run_id": run_id, "meta": store.run_meta(run_id), "programs": rows})
    from rich.table import Table
    table = Table("program", "workflow", "status", "steps", "next step", "time so far s", "error",
                  title=f"{run_id} · {store.path}", title_justify="left")
    for r in rows:
        table.add_row(r["program"], r["workflow"], r["status"], str(r["steps"]), r["at"], f"{r['elapsed_s']:.2f}",
                      (r["error"] or "")[:60])
    out.print(table)
    err.print(f"[dim]resume with: agentrt resume {run_id} --checkpoint {store.path}[/]")


def _where(position: dict[str, Any]) -> str:
    lanes = position.get("lanes")
    if lanes:
        return f"{position['node']} fan-out: " + ", ".join(lane["node"] for lane in lanes)
    return position["node"]
