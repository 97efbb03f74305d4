"""`agentrt bench fidelity REPORT.json --sim PROFILE`: does the simulator predict the real engine?

A saved `bench workflows` report of a real-engine run names everything its run needed (workload,
seed, tiers, engine settings). The same programs run again on the simulated backend with a step
profile (the `cpu` profile that `agentrt bench calibrate` fits to this machine), one run per
policy (the simulator is deterministic), and each policy's mean JCT is set beside the real
median: the relative error, and whether the policies rank in the same order.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

FIDELITY_BOUND = 0.10          # issue 10: within 10% per policy, the same ranking


def simulate_report(real: dict[str, Any], profile: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The real report's run again on the simulator: {policy: mean JCT s}, with run facts."""
    from agentrt.bench.metrics import run_figures
    from agentrt.bench.workflow_bench import Harness, run_bench
    from agentrt.bench.workloads import workload_from_settings
    s = real["settings"]
    if s.get("backend", "real") != "real":
        raise ValueError("the report is of a simulated run already; give a real-engine report")
    harness = Harness(real["model"], dtype=s["dtype"], threads=s["threads"], block_size=s["block_size"],
                      seed=s["seed"], host_tokens=s["kv_host_tokens"], max_num_seqs=s["max_num_seqs"],
                      program_order=s["program_order"], max_programs=s["max_programs"], profile=profile,
                      batch_cap=s.get("batch_cap", False))    # reports older than agentrt's batch cap ran without it
    work = workload_from_settings(s)
    policies = list(real["policies"])
    result = run_bench(harness, work, policies, 1, real["kv_device_tokens"], 0.4, log, warmup=False)
    return {p: run_figures(runs[0]) for p, runs in result.runs.items()}


def compare(real: dict[str, Any], sim: dict[str, dict[str, Any]], metric: str = "mean_jct_s") -> dict[str, Any]:
    rows = []
    for p, entry in real["policies"].items():
        r, m = entry["median"][metric], sim[p][metric]
        rows.append({"policy": p, "real": r, "sim": m, "error": (m - r) / r if r else None})
    rank_real = [row["policy"] for row in sorted(rows, key=lambda x: x["real"])]
    rank_sim = [row["policy"] for row in sorted(rows, key=lambda x: x["sim"])]
    worst = max((abs(row["error"]) for row in rows if row["error"] is not None), default=None)
    return {"metric": metric, "rows": rows, "real_ranking": rank_real, "sim_ranking": rank_sim,
            "same_ranking": rank_real == rank_sim, "max_abs_error": worst,
            "met": worst is not None and worst <= FIDELITY_BOUND and rank_real == rank_sim}


def step_check(real: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    """The profile against every step the real runs measured, by kind (empty: the report kept no steps)."""
    from agentrt.bench.steps import STEP_FIELDS, compare_steps
    from agentrt.engine.sim import load_profile
    logs = real.get("step_logs")
    if not logs:
        return []
    if real.get("step_fields") != list(STEP_FIELDS):
        raise ValueError(f"the report's steps have fields {real.get('step_fields')}, not {list(STEP_FIELDS)}")
    rows = [row for runs in logs.values() for run in runs for row in run]
    return compare_steps(rows, load_profile(profile))


def render_steps(rows: list[dict[str, Any]], profile: str) -> Table:
    table = Table(title=f"every real step against the `{profile}` profile, by kind", title_style="bold")
    for name in ("kind", "steps", "real ms/step", "profile ms/step", "error", "median step error", "share of time"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    for r in rows:
        table.add_row(r["kind"], str(r["steps"]), f"{r['real_ms']:.1f}", f"{r['sim_ms']:.1f}", f"{r['error']:+.1%}",
                      f"{r['median_step_error']:+.1%}", f"{r['share_of_time']:.0%}")
    return table


def render(fid: dict[str, Any], describe: str, profile: str) -> Table:
    table = Table(title=f"fidelity · {describe}\nreal engine (median) vs simulator (`{profile}` profile, 1 run)",
                  title_style="bold", caption_justify="left",
                  caption=f"ranking, fastest first: real {' < '.join(fid['real_ranking'])}; "
                          f"sim {' < '.join(fid['sim_ranking'])}\n"
                          f"target: every policy within {FIDELITY_BOUND:.0%}, same ranking: "
                          f"{'met' if fid['met'] else 'not met'} (worst {fid['max_abs_error']:.1%})")
    for name in ("policy", "real mean JCT s", "sim mean JCT s", "error"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for row in fid["rows"]:
        table.add_row(row["policy"], f"{row['real']:.2f}", f"{row['sim']:.2f}",
                      "—" if row["error"] is None else f"{row['error']:+.1%}")
    return table
