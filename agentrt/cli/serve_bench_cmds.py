"""`agentrt bench serve`: agent sessions through `agentrt serve`, beside the in-process engine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentrt.cli.common import DEFAULT_MODEL, JsonOpt, ModelOpt, bench_app, emit_json, err, out, user_errors


@bench_app.command("serve", epilog="Example: agentrt bench serve --sessions 8 --turns 3 --runs 3 --json")
def bench_serve_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    sessions: Annotated[int, typer.Option(min=1, help="concurrent agent sessions (programs)")] = 8,
    turns: Annotated[int, typer.Option(min=1, help="LLM turns per session (a tool pause between two)")] = 3,
    output_tokens: Annotated[int, typer.Option(min=1, help="tokens per reply (fixed: ignore_eos)")] = 16,
    runs: Annotated[int, typer.Option(min=1, help="runs per peer (medians reported)")] = 3,
    policies: Annotated[str, typer.Option("--policies", "-p", help="server policies, comma-separated")] =
        "lru,continuum,kvflow,agentrt",
    kv_device_tokens: Annotated[int, typer.Option(min=64, help="device-tier KV capacity in tokens (small: "
                                                  "the policies matter)")] = 4096,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="most requests in one engine step")] = 32,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads")] = 2,
    pause_min: Annotated[float, typer.Option(min=0.0, help="shortest tool pause, seconds")] = 0.2,
    pause_max: Annotated[float, typer.Option(min=0.0, help="longest tool pause, seconds")] = 0.8,
    save: Annotated[Path | None, typer.Option(help="also write the JSON object to this file")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Agent sessions (turns and tool pauses) through HTTP: throughput, TTFT / ITL p50 and p99,
    mean session JCT, per server policy, beside the same engine called in-process (and
    llama.cpp's OpenAI server on the same GGUF when llama-cpp-python and its server extra are installed)."""
    from agentrt.bench.serve_bench import bench_serve
    with user_errors():
        names = [p.strip() for p in policies.split(",") if p.strip()]
        bad = [p for p in names if p not in ("lru", "continuum", "kvflow", "agentrt", "none")]
        if bad:
            raise ValueError(f"unknown policies {bad}; choose from lru, continuum, kvflow, agentrt, none")
        result = bench_serve(model, sessions=sessions, turns=turns, output_tokens=output_tokens, runs=runs,
                             policies=names, kv_tokens=kv_device_tokens, max_num_seqs=max_num_seqs, threads=threads,
                             pause_s=(pause_min, max(pause_min, pause_max)), progress=lambda m: err.print(f"[dim]{m}[/]"))
    if save is not None:
        save.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if as_json:
        return emit_json(result)
    t = Table("peer", "tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "mean JCT s", "hit rate",
              "tput vs in-process", "JCT: lru / this", "errors",
              title=f"agentrt bench serve: {model}, {sessions} sessions x {turns} turns, {output_tokens} tokens a "
                    f"reply, KV {kv_device_tokens} tokens, medians of {runs} runs, cpu {result['cpu_capability']}, "
                    f"{threads} threads")
    for peer, m in result["medians"].items():
        t.add_row(peer, f"{m['tok_per_s']:.1f}", f"{m['ttft_p50_ms']:.0f}", f"{m['ttft_p99_ms']:.0f}",
                  f"{m['itl_p50_ms']:.1f}", f"{m['itl_p99_ms']:.1f}", f"{m['mean_jct_s']:.2f}",
                  f"{m['hit_rate']:.0%}", f"{m['vs_in_process_tput']:.3f}",
                  f"{m['jct_vs_lru']:.3f}" if "jct_vs_lru" in m else "-", f"{m['errors']:.0f}")
    out.print(t)
    overhead = result["server_overhead_tput"]
    if overhead is not None:
        out.print(f"server overhead (http/agentrt vs in-process, throughput): {overhead:+.1%} (target <= 10%)")
    out.print(f"llama.cpp server: {result['llama_cpp']}", markup=False)
