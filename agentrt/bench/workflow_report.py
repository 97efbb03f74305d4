"""A `bench workflows` report: the JSON object a run saves (`report_json`), the table it prints
(`render_table`), and several saved runs of one benchmark merged into one report (`merge_reports`:
the median of runs measured at different times, on the same code and settings)."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from agentrt.bench.metrics import evaluate_targets, jct_ratio, median_figures, run_figures
from agentrt.bench.report import code_version, machine_info
from agentrt.bench.steps import step_logs


def report_json(kind: str, model: str, describe: str, result, settings: dict[str, Any]) -> dict[str, Any]:
    ws = result.working_set_tokens
    report = {
        "benchmark": kind, "model": model, "workload": result.workload, "describe": describe,
        "machine": machine_info(settings["dtype"], settings["threads"] or 0), "code": code_version(),
        "settings": settings, "working_set_tokens": ws or None, "kv_device_tokens": result.tier_tokens,
        "tier_fraction_of_working_set": round(result.tier_tokens / ws, 4) if ws else None,
        "longest_request_tokens": result.max_request_tokens or None, "warmup_s": round(result.warmup_s, 3),
        "notes": result.notes,
    }
    per_run = {p: [run_figures(r) for r in runs] for p, runs in result.runs.items()}
    return {**report, **summarize(report, per_run), **step_logs(result.runs)}


def summarize(report: dict[str, Any], per_run: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over runs, ratios to lru, the targets and the floor, from every run's figures."""
    medians = {p: median_figures(figs) for p, figs in per_run.items()}
    target_key = report["workload"]
    if target_key == "swe_agent" and report["settings"].get("backend", "real") not in ("real", "sim:cpu"):
        target_key = "swe_agent@sim"              # at the papers' scale: section 3's targets, not section 2's
    return {
        "policies": {p: {"median": medians[p], "runs": per_run[p]} for p in per_run},
        "vs_lru_mean_jct": {p: _round(jct_ratio(medians, p, "lru")) for p in per_run if p != "lru"}
        if "lru" in medians else {},
        "targets": evaluate_targets(target_key, medians),
        # the same for every policy (the workload fixes every call and pause): simulated conversations only
        "floor_mean_jct_s": next((m["floor_mean_jct_s"] for m in medians.values() if m.get("floor_mean_jct_s")), None),
    }


SAME_IN_MERGED = ("benchmark", "model", "workload", "describe", "code", "working_set_tokens", "kv_device_tokens")
MACHINE_KEYS = ("cpu_capability", "processor", "cpu_count", "threads", "torch_version", "dtype")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Saved reports of one benchmark (the same code, settings and machine kind; policies may
    differ) as one report whose medians are over every run of each policy: a median of 3 whose
    runs were measured at different times. Step logs are dropped (each report keeps its own)."""
    if len(reports) < 2:
        raise ValueError("give at least two reports to merge")
    first = reports[0]
    if not first.get("code") or str(first["code"]).endswith("+dirty"):
        raise ValueError(f"the first report's code is {first.get('code')!r}: only reports of one committed tree "
                         f"can be merged (a report records the commit it ran)")
    settings = _comparable(first["settings"])
    for i, r in enumerate(reports[1:], 2):
        for key in SAME_IN_MERGED:
            if r.get(key) != first.get(key):
                raise ValueError(f"report {i} differs in {key}: {r.get(key)!r} against {first.get(key)!r}")
        if _comparable(r["settings"]) != settings:
            diff = sorted(k for k in {*settings, *r["settings"]} if settings.get(k) != _comparable(r["settings"]).get(k))
            raise ValueError(f"report {i} was run with other settings: {', '.join(diff)}")
        for key in MACHINE_KEYS:
            if r["machine"].get(key) != first["machine"].get(key):
                raise ValueError(f"report {i} ran on another kind of machine: {key} {r['machine'].get(key)!r} "
                                 f"against {first['machine'].get(key)!r}")
    per_run: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        for p, entry in r["policies"].items():
            per_run.setdefault(p, []).extend(entry["runs"])
    counts = {p: len(runs) for p, runs in per_run.items()}
    merged = {k: v for k, v in first.items() if k not in ("step_fields", "step_logs")}
    merged["settings"] = {**first["settings"], "policies": list(per_run), "runs": min(counts.values())}
    merged["notes"] = [*first["notes"], f"merged from {len(reports)} saved reports: runs per policy "
                       + ", ".join(f"{p} {n}" for p, n in counts.items())]
    return {**merged, **summarize(merged, per_run)}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in ("policies", "runs")}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _belady_cell(m: dict[str, Any]) -> str:
    if m["belady_ratio"] is not None:
        return f"{m['belady_ratio']:.2f}"
    return "∞" if m["recomputed_blocks"] else "="


def render_table(report: dict[str, Any]) -> Table:
    s, ws = report["settings"], report["working_set_tokens"]
    tier = report["kv_device_tokens"]
    frac = f" = {report['tier_fraction_of_working_set']:.0%} of the working set ({ws} tok)" if ws else ""
    backend = s.get("backend", "real")
    on = f" · simulated ({backend[4:]} profile, virtual time)" if backend.startswith("sim:") else ""
    title = (f"agentrt bench {report['benchmark']} · {report['describe']} · {report['model']}{on}\n"
             f"device tier {tier} tok{frac}" + (f" · host tier {s['kv_host_tokens']} tok" if s.get("kv_host_tokens")
                                                 else "") + f" · median of {s['runs']} run(s)")
    lines = [f"{p} vs lru: {r:.2f}× mean JCT" for p, r in report["vs_lru_mean_jct"].items() if r is not None]
    for t in report["targets"]:
        met = {True: "[green]met[/]", False: "[red]not met[/]", None: "[dim]n/a[/]"}[t["met"]]
        value = f"{t['ratio']:.2f}×" if t["ratio"] is not None else "—" if t["baseline"] != "belady" else \
            "neither recomputes anything" if t["met"] else "Bélády recomputes nothing, the policy does"
        lines.append(f"target: {t['target']}: {value} → {met}")
    floor = report.get("floor_mean_jct_s")
    if floor:
        lru = report["policies"].get("lru", {}).get("median", {}).get("mean_jct_s")
        lines.append(f"floor: {floor:.2f} s mean JCT with every program alone and nothing lost (no policy can go "
                     f"below it)" + (f"; lru / floor = {lru / floor:.2f}×, the most any policy can gain on lru"
                                     if lru else ""))
    lines += [f"[dim]{n}[/]" for n in report["notes"]]
    m = report["machine"]
    lines.append(f"[dim]machine: {m.get('cpu_capability', '?')} CPU ({m.get('processor', '?')}), "
                 f"{m.get('threads')} threads, torch {m.get('torch_version')}[/]")
    lines.append("[dim]step ms: the runner's time per engine step (virtual on the simulator); policy ms/step: wall "
                 "time in the scheduler's decisions (eviction ranking, swap filter, program table, pins, "
                 "prefetch, admission) per step[/]")
    lines.append("[dim]vs lru: lru's mean JCT / the policy's (> 1× is faster); × Bélády: recomputed blocks / "
                 "Bélády MIN's on the policy's own access log (= when both recompute none, ∞ when only the "
                 "policy does)[/]")
    table = Table(title=title, caption="\n".join(lines), title_style="bold", caption_justify="left")
    host = bool(s.get("kv_host_tokens"))
    for name in ("policy", "mean JCT s", "p50 s", "p95 s", "prog/s", "out tok/s", "recomputed tok", "hit rate",
                 "× Bélády", "peak blocks", *(["host loads"] if host else []), "step ms", "policy ms/step",
                 "vs lru"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for p, entry in report["policies"].items():
        m = entry["median"]
        ratio = report["vs_lru_mean_jct"].get(p)
        failed = f" [red]({m['failed']} failed)[/]" if m["failed"] else ""
        table.add_row(p + failed, f"{m['mean_jct_s']:.2f}", f"{m['p50_jct_s']:.2f}", f"{m['p95_jct_s']:.2f}",
                      f"{m['programs_per_s']:.3f}", f"{m['output_tokens_per_s']:.1f}", f"{m['recomputed_tokens']:,}",
                      f"{m['prefix_hit_rate']:.1%}", _belady_cell(m),
                      f"{m['peak_blocks']} ({m['peak_fraction']:.0%})",
                      *([f"{m['host_loaded_blocks']:,} blk"] if host else []),
                      f"{m['step_ms']:.1f}", f"{m['policy_ms_per_step']:.3f}",
                      "—" if ratio is None else f"[{'green' if ratio >= 1 else 'red'}]{ratio:.2f}×[/]")
    return table
