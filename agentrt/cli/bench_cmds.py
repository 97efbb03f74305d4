"""Policy benchmarks: `agentrt bench workflows` and `agentrt bench replay`.

Both print one table (per policy: mean / p50 / p95 JCT, programs/s and output tokens/s, recomputed
prefill tokens, prefix hit rate, recompute over Bélády's, device-tier peak, mean JCT vs lru) with the
targets below it, progress on stderr. `--json` prints one object instead: benchmark, model, workload,
describe, machine, settings, working_set_tokens, kv_device_tokens, tier_fraction_of_working_set,
longest_request_tokens, warmup_s, policies {name: {median: figures, runs: [figures per run]}},
vs_lru_mean_jct {name: ratio}, targets [{target, policy, baseline, bound, ratio, met}], notes.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from agentrt.cli.common import DEFAULT_MODEL, EngineDTypeOpt, JsonOpt, ModelOpt, bench_app, emit_json, err, out, \
    parse_size, user_errors

ALL_POLICIES = "lru,continuum,continuum-ttl,kvflow,agentrt"


class WorkloadName(str, enum.Enum):
    research_team = "research_team"
    coding_agent = "coding_agent"
    swe_agent = "swe_agent"
    agent_pipeline = "agent_pipeline"


class TraceFormat(str, enum.Enum):
    tracelab = "tracelab"
    mooncake = "mooncake"


PoliciesOpt = Annotated[str, typer.Option("--policies", "-p", help="comma-separated: lru, lru+host, continuum, "
                                                                  "continuum-ttl, kvflow, agentrt")]
RunsOpt = Annotated[int, typer.Option(min=1, help="measured runs per policy (medians reported)")]
DeviceOpt = Annotated[int | None, typer.Option("--kv-device-tokens", min=16, help="device-tier KV capacity in tokens "
                                                "(default: --tier-fraction of the working set)")]
BytesOpt = Annotated[str | None, typer.Option("--kv-device-bytes", help="device-tier KV capacity as a size "
                                              "(64MiB, 1.5GB), turned into whole blocks of the model's KV; "
                                              "instead of --kv-device-tokens")]
HostOpt = Annotated[int, typer.Option("--kv-host-tokens", min=0, help="host-tier KV capacity in tokens (0: none)")]
FractionOpt = Annotated[float, typer.Option(min=0.01, max=4.0, help="default device tier as a fraction of the "
                                                                      "working set")]
SeqsOpt = Annotated[int, typer.Option("--max-num-seqs", min=1, help="most requests in one engine step, for every "
                                      "policy (the batch size where the step time stops paying off)")]
class ProgramOrder(str, enum.Enum):
    fcfs = "fcfs"
    las = "las"


_ORDER = {ProgramOrder.fcfs: "program", ProgramOrder.las: "las"}
OrderOpt = Annotated[ProgramOrder, typer.Option("--program-order", help="how continuum and agentrt order programs: "
                                                "fcfs (by arrival) or las (least attained service)")]
ProgramsCapOpt = Annotated[int | None, typer.Option("--max-programs", min=1, help="continuum and agentrt run at "
                                                    "most this many programs at once (program-level admission)")]
BatchCapOpt = Annotated[bool, typer.Option(help="agentrt runs as many programs at once as the engine's measured step "
                                                "costs make worth it (sqrt(n a / c); --max-programs replaces it)")]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="torch CPU threads")]
BlockOpt = Annotated[int, typer.Option(min=1, help="tokens per KV block (larger blocks make paper-scale "
                                                   "simulations cheaper to run and to bound with Bélády)")]
PlotOpt = Annotated[Path | None, typer.Option(help="draw a timeline per policy and a JCT bar chart to this PNG")]
SaveOpt = Annotated[Path | None, typer.Option(help="also write the JSON object to this file")]
WarmupOpt = Annotated[bool, typer.Option(help="an uncounted warm-up run first (for workflows it also "
                                              "measures the working set)")]
ProfileOpt = Annotated[str | None, typer.Option("--sim", metavar="PROFILE",
                                                help="run on the simulated backend with this step-time profile "
                                                     "(cpu, h100-llama3-8b, h100x4-llama3-70b, or a file): the same "
                                                     "scheduler, pool and policies on virtual time, no model compute")]


@bench_app.command("workflows", epilog="Examples: agentrt bench workflows --workload research_team --programs 16 · "
                                       "agentrt bench workflows -w coding_agent --rate 0.5 --speedup 4 --json · "
                                       "agentrt bench workflows --policies lru,agentrt --plot timeline.png")
def bench_workflows(
    workload: Annotated[WorkloadName, typer.Option("--workload", "-w", help="which ready-made workflow, "
                                                                            "in its fixed shape")] = WorkloadName.research_team,
    policies: PoliciesOpt = ALL_POLICIES,
    programs: Annotated[int, typer.Option("--programs", "-n", min=1, help="programs per run")] = 16,
    rate: Annotated[float, typer.Option(min=0.0, help="Poisson arrivals per second; 0: all at once")] = 0.0,
    kv_device_tokens: DeviceOpt = None,
    kv_device_bytes: BytesOpt = None,
    kv_host_tokens: HostOpt = 0,
    tier_fraction: FractionOpt = 0.4,
    runs: RunsOpt = 3,
    model: ModelOpt = DEFAULT_MODEL,
    output_tokens: Annotated[int | None, typer.Option(min=1, help="tokens per agent turn "
                                                                  "(default 48 research_team, 32 coding_agent)")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="coding_agent: loop rounds (4); research_team: "
                                                           "review rounds (1); agent_pipeline: agents (10)")] = None,
    speedup: Annotated[float, typer.Option(min=0.001, help="divide tool pauses by this")] = 1.0,
    pipelines: Annotated[int, typer.Option(min=1, help="agent_pipeline: kinds of pipeline, each with its agents' "
                                                       "own prompts (program i is of kind i mod this)")] = 1,
    scale: Annotated[float, typer.Option(min=0.001, help="swe_agent, agent_pipeline: multiply every token "
                                                         "length by this (0.125 suits a small CPU model)")] = 1.0,
    turns: Annotated[str, typer.Option(metavar="LO-HI", help="swe_agent: turns per program, drawn "
                                                             "uniformly")] = "20-60",
    seed: Annotated[int, typer.Option(min=0, help="seed of arrivals, texts and tool pauses")] = 0,
    dtype: EngineDTypeOpt = "auto",
    threads: ThreadsOpt = 2,
    max_num_seqs: SeqsOpt = 64,
    program_order: OrderOpt = ProgramOrder.fcfs,
    max_programs: ProgramsCapOpt = None,
    batch_cap: BatchCapOpt = True,
    warmup: WarmupOpt = True,
    sim: ProfileOpt = None,
    block_size: BlockOpt = 16,
    rates: Annotated[str | None, typer.Option(metavar="R1,R2,...", help="sweep these Poisson arrival rates "
                                              "(programs/s) instead of --rate: a table of mean JCT per rate, "
                                              "--plot draws JCT against rate (and the heaviest rate's timeline)")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="with --rates and --sim: simulate this many rates at once, "
                                                  "one process each (the simulator is deterministic, so the "
                                                  "figures are the same; real-engine runs need the machine alone)")] = 1,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
    save: SaveOpt = None,
) -> None:
    """The KV policies side by side on many concurrent fixed-shape programs (same inputs, fresh engine each)."""
    from agentrt.bench.workflow_bench import parse_policies
    from agentrt.bench.workloads import workload_from_settings
    settings = {"workload": workload.value, "programs": programs, "rate": rate, "output_tokens": output_tokens,
                "rounds": rounds, "speedup": speedup, "seed": seed}
    if workload in (WorkloadName.swe_agent, WorkloadName.agent_pipeline):
        settings.update(scale=scale)
    if workload is WorkloadName.agent_pipeline:
        settings.update(pipelines=pipelines)
    if workload is WorkloadName.swe_agent:
        settings.update(turns=turns)

    def workload_at(rate: float):
        return workload_from_settings({**settings, "rate": rate})
    with user_errors():
        names = parse_policies(policies)
        sweep = None
        if rates is not None:
            from agentrt.bench.sweep import parse_rates
            sweep = parse_rates(rates)
        if jobs > 1 and (sweep is None or sim is None):
            raise ValueError("--jobs runs the rates of a simulated sweep at once: give --rates and --sim "
                             "(a real-engine run needs the machine to itself)")
        work = workload_at(sweep[0] if sweep else rate)
        build = dict(model=model, dtype=dtype, threads=threads, host_tokens=kv_host_tokens, max_num_seqs=max_num_seqs,
                     order=program_order, max_programs=max_programs, device_tokens=kv_device_tokens,
                     device_bytes=kv_device_bytes, seed=seed, profile=sim, block_size=block_size, batch_cap=batch_cap)
        harness, kv_device_tokens = _load_harness(**build)
    if sweep is None:
        return _run("workflows", harness, work, names, runs, kv_device_tokens, kv_host_tokens, tier_fraction, warmup,
                    settings, as_json, plot, save)
    job = {"build": build, "names": names, "runs": runs, "kv_host_tokens": kv_host_tokens,
           "tier_fraction": tier_fraction, "warmup": warmup, "settings": settings}
    timelines = [plot.with_name(f"{plot.stem}-timeline-{r:g}{plot.suffix}") if plot and i == len(sweep) - 1 else None
                 for i, r in enumerate(sweep)]                 # the heaviest rate's timeline
    if jobs > 1:
        from agentrt.cli.sweep_jobs import sweep_in_processes
        with user_errors():
            reports = sweep_in_processes(job, sweep, timelines, jobs, save)
    else:
        reports = []
        for i, r in enumerate(sweep):
            err.print(f"[bold]rate {r:g} programs/s[/] ({i + 1}/{len(sweep)})")
            with user_errors():
                work = workload_at(r) if i else work
            reports.append(_report("workflows", harness, work, names, runs, kv_device_tokens, kv_host_tokens,
                                   tier_fraction, warmup, {**settings, "rate": r}, timelines[i]))
    from agentrt.bench.sweep import plot_sweep, render_sweep
    if plot is not None:
        err.print(f"[dim]wrote {plot_sweep(reports, plot)}[/]")
    if save:
        save.write_text(json.dumps({"sweep": reports}, indent=2, default=str) + "\n")
    if as_json:
        return emit_json({"sweep": reports})
    out.print(render_sweep(reports))


@bench_app.command("replay", epilog="Examples: agentrt bench replay ../shared/workloads/tracelab_multi_session_large.csv "
                                    "--limit 12 · agentrt bench replay ../shared/workloads/mooncake_format_sample.jsonl "
                                    "--format mooncake --scale 0.125 --json")
def bench_replay(
    trace: Annotated[Path, typer.Argument(help="a TraceLab multi-session CSV or a Mooncake-format JSONL file")],
    trace_format: Annotated[TraceFormat | None, typer.Option("--format", "-f", help="tracelab or mooncake "
                                                             "(default: by suffix, .csv or .jsonl)")] = None,
    policies: PoliciesOpt = ALL_POLICIES,
    scale: Annotated[float, typer.Option(min=0.0001, help="token-length scale (Mooncake: block size scale) "
                                                          "so a CPU model can run it")] = 0.125,
    limit: Annotated[int | None, typer.Option(min=1, help="replay only the first N sessions / requests")] = None,
    speedup: Annotated[float, typer.Option(min=0.001, help="compress arrival times and pauses X-fold")] = 1.0,
    kv_device_tokens: DeviceOpt = None,
    kv_device_bytes: BytesOpt = None,
    kv_host_tokens: HostOpt = 0,
    tier_fraction: FractionOpt = 0.4,
    runs: RunsOpt = 3,
    model: ModelOpt = DEFAULT_MODEL,
    seed: Annotated[int, typer.Option(min=0, help="seed of the synthetic token ids")] = 0,
    dtype: EngineDTypeOpt = "auto",
    threads: ThreadsOpt = 2,
    max_num_seqs: SeqsOpt = 64,
    program_order: OrderOpt = ProgramOrder.fcfs,
    max_programs: ProgramsCapOpt = None,
    warmup: WarmupOpt = True,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
    save: SaveOpt = None,
) -> None:
    """Replay a TraceLab or Mooncake-format trace under each KV policy (synthetic ids, exact sharing)."""
    from agentrt.bench.replay import load, replay_workload
    from agentrt.bench.workflow_bench import parse_policies
    with user_errors():
        names = parse_policies(policies)
        if not trace.is_file():
            raise ValueError(f"no such trace file: {trace}")
        fmt = trace_format.value if trace_format else {".csv": "tracelab", ".jsonl": "mooncake"}.get(trace.suffix)
        if fmt is None:
            raise ValueError(f"cannot tell the format of {trace.name} from its suffix; pass --format tracelab|mooncake")
        harness, kv_device_tokens = _load_harness(model, dtype, threads, kv_host_tokens, max_num_seqs, program_order,
                                                  max_programs, kv_device_tokens, kv_device_bytes)
        loaded = load(trace, fmt, scale=scale, limit=limit, speedup=speedup, vocab=harness.vocab_size, seed=seed)
        work = replay_workload(loaded, harness.block_size)
    settings = {"trace": str(trace), "format": fmt, "scale": scale, "limit": limit, "speedup": speedup, "seed": seed}
    _run("replay", harness, work, names, runs, kv_device_tokens, kv_host_tokens, tier_fraction, warmup,
         settings, as_json, plot, save)


def _load_harness(model: str, dtype: str, threads: int, host_tokens: int, max_num_seqs: int, order: ProgramOrder,
                  max_programs: int | None, device_tokens: int | None, device_bytes: str | None, *, seed: int = 0,
                  profile: str | None = None, block_size: int = 16, batch_cap: bool = True):
    """The weights and engine settings every policy shares, and the device tier in tokens."""
    from agentrt.bench.workflow_bench import Harness
    with err.status(f"loading {model} ..."):
        harness = Harness(model, dtype=dtype, threads=threads, seed=seed, host_tokens=host_tokens, block_size=block_size,
                          max_num_seqs=max_num_seqs, program_order=_ORDER[order], max_programs=max_programs,
                          profile=profile, batch_cap=batch_cap)
    return harness, _device_tokens(harness, device_tokens, device_bytes)


def _device_tokens(harness, tokens: int | None, size: str | None) -> int | None:
    """The device tier in tokens, from --kv-device-tokens or --kv-device-bytes (not both); on the
    simulator, by default the profile's accelerator capacity."""
    if size is None:
        if tokens is None and harness.profile is not None:
            return harness.profile.kv_capacity_tokens
        return tokens
    if tokens is not None:
        raise ValueError("give the device tier once: --kv-device-tokens or --kv-device-bytes, not both")
    per_block = harness.kv_bytes_per_token() * harness.block_size
    blocks = parse_size(size) // per_block
    if blocks < 1:
        raise ValueError(f"--kv-device-bytes {size} holds no KV block ({per_block:,} bytes per block of "
                         f"{harness.block_size} tokens for {harness.model})")
    return blocks * harness.block_size


def _run(kind: str, harness, work, names: list[str], runs: int, kv_device_tokens: int | None, kv_host_tokens: int,
         tier_fraction: float, warmup: bool, settings: dict[str, Any], as_json: bool, plot: Path | None,
         save: Path | None) -> None:
    report = _report(kind, harness, work, names, runs, kv_device_tokens, kv_host_tokens, tier_fraction, warmup,
                     settings, plot)
    if save:
        save.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if as_json:
        return emit_json(report)
    from agentrt.bench.workflow_report import render_table
    out.print(render_table(report))


def _report(kind: str, harness, work, names: list[str], runs: int, kv_device_tokens: int | None, kv_host_tokens: int,
            tier_fraction: float, warmup: bool, settings: dict[str, Any], plot: Path | None) -> dict[str, Any]:
    from agentrt.bench.workflow_bench import run_bench
    from agentrt.bench.workflow_report import report_json
    with user_errors():
        result = run_bench(harness, work, names, runs, kv_device_tokens, tier_fraction,
                           lambda m: err.print(m, markup=False, soft_wrap=True), warmup=warmup)
    settings = {**settings, "policies": names, "runs": runs, "kv_device_tokens": result.tier_tokens,
                "kv_host_tokens": kv_host_tokens, "tier_fraction": tier_fraction if kv_device_tokens is None else None,
                "block_size": harness.block_size, "dtype": harness.dtype, "threads": harness.threads,
                "max_num_seqs": harness.max_num_seqs, "program_order": harness.program_order,
                "max_programs": harness.max_programs, "batch_cap": harness.batch_cap is not False, "warmup": warmup,
                "backend": harness.backend}
    report = report_json(kind, harness.model, work.describe, result, settings)
    if plot is not None:
        from agentrt.bench.plot import plot_result
        plot_result(result, plot, title=f"{kind} · {work.describe}")
        err.print(f"[dim]wrote {plot}[/]")
    return report


@bench_app.command("calibrate", epilog="Examples: agentrt bench calibrate · agentrt bench calibrate --out my-cpu.json "
                                       "· agentrt bench workflows --sim cpu")
def bench_calibrate(
    model: ModelOpt = DEFAULT_MODEL,
    dtype: EngineDTypeOpt = "auto",
    threads: ThreadsOpt = 2,
    out_path: Annotated[Path | None, typer.Option("--out", help="where to write the profile (default: the "
                                                                "package's profiles/cpu.json)")] = None,
    from_report: Annotated[Path | None, typer.Option("--from-report", help="fit to the steps a saved real-engine "
                                                     "`bench workflows` run recorded instead of measuring (adds "
                                                     "the padded prefill batch and the shared decode prefix)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the simulated backend's step-time model to this machine's engine (writes the `cpu` profile).

    Runs decode steps at several batch sizes and contexts and prefill chunks of several sizes on the
    real engine, then fits step = a + b·prefill tokens + c·decode sequences + d·context tokens read
    (least squares, no negative term). Run it on an otherwise idle machine.
    """
    from agentrt.bench.calibrate import calibrate
    from agentrt.bench.report import machine_info
    from agentrt.engine.sim import PROFILE_DIR
    with user_errors():
        harness, _ = _load_harness(model, dtype, threads, 0, 64, ProgramOrder.fcfs, None, None, None)
    machine = machine_info(dtype, threads)
    cpu = f"{machine['cpu_capability']} CPU, {machine['processor']}"
    block_bytes = harness.kv_bytes_per_token() * harness.block_size
    if from_report is not None:
        from agentrt.bench.calibrate import profile_from_report
        with user_errors():
            if not from_report.is_file():
                raise ValueError(f"no such report: {from_report}")
            profile = profile_from_report(json.loads(from_report.read_text()), name="cpu", block_bytes=block_bytes)
    else:
        profile = calibrate(harness.loaded, threads=threads, dtype=dtype, name="cpu", machine=cpu,
                            block_bytes=block_bytes, log=lambda m: err.print(m, markup=False))
    path = profile.save(out_path or PROFILE_DIR / "cpu.json")
    if as_json:
        return emit_json({"profile": str(path), **{k: getattr(profile, k) for k in
                                                   ("base_s", "prefill_token_s", "decode_seq_s", "context_token_s",
                                                    "decode_context_token_s", "context_padded_s",
                                                    "decode_shared_token_s")},
                          "fit": {k: v for k, v in (profile.fit or {}).items() if k != "points"}})
    f = profile.fit or {}
    out.print(f"wrote {path}: step = {profile.base_s * 1e3:.2f} ms + {profile.prefill_token_s * 1e6:.1f} µs/prefill "
              f"token + {profile.decode_seq_s * 1e6:.1f} µs/decode seq + {profile.context_token_s * 1e9:.2f} ns/context "
              f"token a prefill reads + {profile.decode_context_s * 1e9:.2f} ns/context token a decode reads"
              + (f" + {profile.context_padded_s * 1e9:.3f} ns/padded query-key pair + "
                 f"{profile.decode_shared_token_s * 1e9:.2f} ns/shared prefix token a decode reads"
                 if profile.models_padding else "") +
              f"; median |error| {f.get('median_abs_rel_error', 0):.1%}, max {f.get('max_abs_rel_error', 0):.1%} "
              f"over {f.get('steps', len(f.get('points', [])))} steps ({cpu})")
