"""What `agentrt run` shows: live progress on stderr while programs run, then a results table."""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agentrt.runtime import Event, ProgramResult


class RunProgress:
    """An event sink: a progress bar over programs with live counts (TTY), or one line per
    finished program (logs)."""

    def __init__(self, console: Console, total: int, live: bool):
        self.console, self.total, self.live = console, total, live
        self.counts = {"running": 0, "done": 0, "failed": 0, "cancelled": 0, "llm": 0, "tools": 0, "tokens": 0}
        self.t0 = time.monotonic()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=True) if live else None
        self.task = self.progress.add_task("programs", total=total, detail="") if live else None

    def __enter__(self) -> "RunProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, event: Event) -> None:
        c = self.counts
        kind = event.event
        if kind == "program_start":
            c["running"] += 1
        elif kind == "program_end":
            c["running"] -= 1
            c[event.data["status"]] += 1
            if not self.live:
                self._log_end(event)
        elif kind == "llm_end":
            c["llm"] += 1
            c["tokens"] += event.data["tokens_out"]
        elif kind == "tool_end":
            c["tools"] += 1
        if self.progress is not None:
            self._refresh()

    def _refresh(self) -> None:
        c = self.counts
        rate = c["tokens"] / max(time.monotonic() - self.t0, 1e-9)
        detail = (f"running {c['running']} · failed {c['failed']} · {c['llm']} LLM calls · "
                  f"{c['tools']} tool calls · {c['tokens']} tokens ({rate:.0f}/s)")
        finished = c["done"] + c["failed"] + c["cancelled"]
        self.progress.update(self.task, completed=finished, detail=detail)

    def _log_end(self, event: Event) -> None:
        d = event.data
        finished = self.counts["done"] + self.counts["failed"] + self.counts["cancelled"]
        line = f"[{finished}/{self.total}] {event.program} {d['status']} in {d['jct']:.2f} s"
        self.console.print(line + (f": {d['error']}" if d.get("error") else ""), markup=False, highlight=False)


def results_table(results: list[ProgramResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("program", "status", "JCT s", "steps", "LLM calls", "tool calls", "tokens in",
                 "cached", "tokens out", "hit rate"):
        table.add_column(name, justify="left" if name in ("program", "status") else "right")
    for r in results:
        status = {"done": "[green]done[/]", "failed": "[red]failed[/]"}.get(r.status, f"[yellow]{r.status}[/]")
        table.add_row(r.program_id, status, f"{r.jct:.2f}", str(r.steps), str(r.llm_calls), str(r.tool_calls),
                      f"{r.tokens_in:,}", f"{r.cached_tokens:,}", f"{r.tokens_out:,}", f"{r.hit_rate:.0%}")
    return table


def summary_line(summary: dict[str, Any]) -> str:
    s = summary
    return (f"{s['done']}/{s['programs']} done, {s['failed']} failed · wall {s['wall_s']:.2f} s · "
            f"mean JCT {s['mean_jct_s']:.2f} s (p50 {s['p50_jct_s']:.2f}, p95 {s['p95_jct_s']:.2f}) · "
            f"{s['llm_calls']} LLM calls · {s['tool_calls']} tool calls · prefix hit rate "
            f"{s['prefix_hit_rate']:.0%} · {s['output_tokens_per_s']:.1f} output tok/s")


def output_panel(result: ProgramResult, field: str | None) -> Panel:
    if result.status != "done":
        body, style = result.error or result.status, "red"
    else:
        value = result.output if field else result.state.model_dump_json(indent=2)
        body = "\n".join(f"- {v}" for v in value) if isinstance(value, list) else str(value)
        style = "cyan"
    title = f"{result.program_id} · {field or 'final state'}"
    return Panel(Text(body.strip() or "(empty)"), title=Text(title, style=f"bold {style}"),
                 title_align="left", expand=False)
