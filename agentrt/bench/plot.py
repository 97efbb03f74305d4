"""The `--plot` figure of the policy benchmarks: one timeline per policy (its first measured run;
programs on the y axis; LLM steps, tool pauses, TTL pins and evictions) and a bar chart of mean
JCT per policy (median over runs, with the runs' spread)."""
from __future__ import annotations

import statistics
from pathlib import Path

LLM_COLOR, TOOL_COLOR, PIN_COLOR, EVICT_COLOR = "#3b6fb6", "#f0a030", "#3aa655", "#d62728"


def plot_result(result, path: str | Path, *, title: str = "", max_programs: int = 48) -> Path:
    """Write the figure for a BenchResult to `path` (PNG); returns the path."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    policies = [p for p in result.policies if result.runs.get(p)]
    n = len(policies)
    programs = _program_order(result, policies)[:max_programs]
    height = max(1.6, 0.16 * len(programs) + 0.9)
    fig, axes = plt.subplots(n + 1, 1, figsize=(11, height * n + 2.6),
                             gridspec_kw={"height_ratios": [height] * n + [2.2]}, squeeze=False)
    axes = axes[:, 0]
    t_max = max((run.wall_s for p in policies for run in result.runs[p][:1]), default=1.0) or 1.0
    for ax, policy in zip(axes, policies):
        _timeline(ax, result.runs[policy][0], programs, t_max)
        ax.set_title(f"{policy} (run 1): mean JCT {_mean_jct(result.runs[policy][0]):.2f} s, "
                     f"{result.runs[policy][0].evicted_blocks} blocks evicted", fontsize=9, loc="left")
    axes[n - 1].set_xlabel("seconds since the run started")
    handles = [Patch(color=LLM_COLOR, label="LLM step"), Patch(color=TOOL_COLOR, label="tool pause"),
               Patch(color=PIN_COLOR, label="TTL pin"),
               Line2D([], [], color=EVICT_COLOR, marker="x", linestyle="", label="blocks evicted")]
    axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=4,
                   frameon=False)
    _bars(axes[n], result, policies)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _program_order(result, policies: list[str]) -> list[str]:
    """Programs by arrival in the first policy's first run."""
    run = result.runs[policies[0]][0] if policies else None
    return [p.program_id for p in run.programs] if run else []


def _mean_jct(run) -> float:
    jcts = [p.jct_s for p in run.programs if p.status == "done"]
    return statistics.fmean(jcts) if jcts else 0.0


def _timeline(ax, run, programs: list[str], t_max: float) -> None:
    row = {pid: i for i, pid in enumerate(programs)}
    spans: dict[str, dict[int, list]] = {"llm": {}, "tool": {}, "pin": {}}
    evictions: list[tuple[float, int, int]] = []
    for kind, pid, t0, t1, n in run.timeline:
        if pid not in row:
            continue
        if kind == "evict":
            evictions.append((t0, row[pid], n))
        elif kind in spans:
            spans[kind].setdefault(row[pid], []).append((t0, max(t1 - t0, t_max / 2000)))
    for kind, color, offset, thickness in (("tool", TOOL_COLOR, -0.35, 0.7), ("llm", LLM_COLOR, -0.35, 0.7),
                                           ("pin", PIN_COLOR, 0.22, 0.16)):
        for y, bars in spans[kind].items():
            ax.broken_barh(bars, (y + offset, thickness), facecolors=color, alpha=0.85 if kind != "tool" else 0.6,
                           linewidth=0)
    if evictions:
        sizes = [min(60, 8 + 2 * n) for _, _, n in evictions]
        ax.scatter([t for t, _, _ in evictions], [y for _, y, _ in evictions], s=sizes, marker="x",
                   color=EVICT_COLOR, linewidths=0.8, zorder=3)
    for p in run.programs:                               # arrival ticks
        if p.program_id in row:
            ax.plot([p.arrival_s], [row[p.program_id]], marker="|", color="black", markersize=6)
    ax.set_xlim(0, t_max * 1.02)
    ax.set_ylim(len(programs) - 0.5, -0.5)
    step = max(1, len(programs) // 16)
    ax.set_yticks(range(0, len(programs), step))
    ax.set_yticklabels(programs[::step], fontsize=6)
    ax.set_ylabel("program", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def _bars(ax, result, policies: list[str]) -> None:
    means = [[_mean_jct(r) for r in result.runs[p]] for p in policies]
    medians = [statistics.median(m) for m in means]
    lo = [med - min(m) for med, m in zip(medians, means)]
    hi = [max(m) - med for med, m in zip(medians, means)]
    colors = ["#7f7f7f" if p == "lru" else "#1f77b4" if p != "agentrt" else "#2ca02c" for p in policies]
    bars = ax.bar(policies, medians, yerr=[lo, hi], color=colors, capsize=4)
    for bar, value in zip(bars, medians):
        ax.annotate(f"{value:.2f} s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, max([*medians, *(max(m) for m in means), 1e-3]) * 1.2)
    ax.set_ylabel("mean JCT (s)", fontsize=8)
    ax.set_title(f"mean JCT per policy (median of {max(len(m) for m in means)} run(s); bars: min-max)",
                 fontsize=9, loc="left")
    ax.tick_params(labelsize=8)
