"""The engine benchmark's table (rich) and its JSON object."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from agentrt.bench.engine_bench import CaseResult, Measurement, Target
from agentrt.bench.peers import Absent, Peer

SHORT = {"transformers": "tf", "llama.cpp": "llama", "float32": "fp32", "bfloat16": "bf16"}


def peer_names(peers: list[Peer], absent: list[Absent]) -> list[str]:
    """Column order: agentrt, then the peers as built, then the absent ones."""
    return [p.name for p in peers] + [a.name for a in absent]


def short(name: str) -> str:
    return "-".join(SHORT.get(part, part) for part in name.replace("llama.cpp", "llama").split("-"))


def code_version() -> str | None:
    """The commit of the agentrt tree this runs from ("+dirty" when agentrt/ has changes), or None
    outside a git checkout: what lets saved reports be merged as runs of the same code."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "agentrt"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def machine_info(dtype: str, threads: int) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads, "torch_threads": torch.get_num_threads(),
        "processor": _cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
        "torch_version": torch.__version__, "transformers_version": _version("transformers"),
        "llama_cpp_version": _version("llama_cpp_python"), "dtype": dtype,
    }


def to_json(model: str, results: list[CaseResult], peers: list[Peer], absent: list[Absent],
            settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "engine", "model": model, "machine": machine_info(settings["dtype"], settings["threads"]),
        "settings": settings,
        "peers": {**{p.name: {"available": True, "detail": p.detail} for p in peers},
                  **{a.name: {"available": False, "reason": a.reason} for a in absent}},
        "cases": {r.case.name: _case_json(r, absent, peer_names(peers, absent)[1:]) for r in results},
    }


def _case_json(r: CaseResult, absent: list[Absent], others: list[str]) -> dict[str, Any]:
    c = r.case
    return {
        "title": c.title, "kind": c.kind, "unit": c.unit, "higher_is_better": c.higher_is_better,
        "batch": c.batch, "prompt_tokens": c.shared_len + c.prompt_len, "shared_prefix_tokens": c.shared_len,
        "new_tokens": c.max_new, "skipped": r.skipped,
        "results": {**{name: _measurement_json(m) for name, m in r.results.items()},
                    **{name: {"error": e} for name, e in r.errors.items()},
                    **{a.name: None for a in absent if not r.skipped}},
        "ratios": {name: r.ratio(name) for name in others},
        "targets": [{"peer": t.peer, "min_ratio": t.min_ratio, "ratio": r.ratio(t.peer), "met": r.target_met(t)}
                    for t in c.targets],
    }


def _measurement_json(m: Measurement) -> dict[str, Any]:
    return {"median": m.median, "runs": m.runs, "warmup_s": round(m.warmup_s, 3),
            "seconds": round(m.seconds, 3), **m.info}


def render_table(results: list[CaseResult], peers: list[Peer], absent: list[Absent], runs: int, title: str) -> Table:
    absent_names = {a.name for a in absent}
    names = peer_names(peers, absent)
    notes = [f"{a.name}: absent, {a.reason}" for a in absent]
    notes += [f"{r.case.name}: skipped, {r.skipped}" for r in results if r.skipped]
    notes += [f"{r.case.name}: {name} failed, {e}" for r in results for name, e in r.errors.items()]
    caption = "\n".join([f"median of {runs} measured runs after a warm-up, (n=k): fewer (--budget-s); "
                          "vs > 1× means agentrt is better", *notes])
    table = Table(title=title, caption=caption, title_style="bold", caption_justify="left")
    table.add_column("case")
    for name in names:
        table.add_column(short(name) if name != "agentrt" else name, justify="right")
    for name in names[1:]:
        table.add_column(f"vs {short(name)}", justify="right")
    table.add_column("target")
    table.add_column("met", justify="center")
    for r in results:
        case = f"{r.case.name} [dim]{r.case.unit}[/]"
        if r.skipped:
            table.add_row(case, "[dim]skipped[/]", *[""] * (len(table.columns) - 2))
            continue
        cells = ["[red]error[/]" if n in r.errors else _figure(r.results.get(n), runs, n in absent_names)
                 for n in names]
        ratios = [_ratio(r.ratio(n)) for n in names[1:]]
        target = " ".join(f"≥{t.min_ratio:g}× {short(t.peer)}" for t in r.case.targets) or "—"
        table.add_row(case, *cells, *ratios, target, _met(r, r.case.targets))
    return table


def _figure(m: Measurement | None, runs: int, is_absent: bool) -> str:
    if m is None:
        return "[dim]absent[/]" if is_absent else "[dim]—[/]"
    fewer = f" [dim](n={len(m.runs)})[/]" if len(m.runs) < runs else ""
    return f"{m.median:,.1f}{fewer}" if m.median >= 10 else f"{m.median:.2f}{fewer}"


def _ratio(r: float | None) -> str:
    if r is None:
        return "[dim]—[/]"
    return f"[{'green' if r >= 1 else 'red'}]{r:.2f}×[/]"


def _met(r: CaseResult, targets: tuple[Target, ...]) -> str:
    if not targets:
        return "[dim]—[/]"
    met = [r.target_met(t) for t in targets]
    if any(m is None for m in met):
        return "[dim]n/a[/]" if not any(m is False for m in met) else "[red]no[/]"
    return "[green]yes[/]" if all(met) else "[red]no[/]"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
