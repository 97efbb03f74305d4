"""Engine commands: models, generate, demo, bench engine."""
from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentrt.cli.common import (DEFAULT_MODEL, EngineDTypeOpt, JsonOpt, KVDiskOpt, ModelOpt, WeightsOpt, app,
                                bench_app, disk_options, emit_json, err, load_engine, out, user_errors)

DEMO_QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about caches.",
    "Explain in two sentences why 2 + 2 = 4.",
    "Define a KV cache in one sentence.",
)


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.command(epilog="Example: agentrt models --json")
def models(as_json: JsonOpt = False) -> None:
    """List the built-in model aliases."""
    from agentrt.engine import MODEL_ALIASES
    if as_json:
        return emit_json({"models": MODEL_ALIASES, "default": DEFAULT_MODEL})
    table = Table("name", "description")
    for name, description in MODEL_ALIASES.items():
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), description)
    out.print(table)


@app.command(epilog="Example: agentrt generate 'What is a KV cache?' 'Name three rivers.' --max-tokens 48")
def generate(
    prompts: Annotated[list[str], typer.Argument(help="one or more prompts, generated as one batch")],
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="most tokens per answer")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 is greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 1.0,
    top_k: Annotated[int, typer.Option(help="0: no top-k cut")] = 0,
    seed: Annotated[int | None, typer.Option(help="seed for reproducible sampling")] = None,
    chat: Annotated[bool, typer.Option(help="wrap each prompt as a user message (chat template)")] = True,
    dtype: EngineDTypeOpt = "auto",
    weights: WeightsOpt = "auto",
    kv_disk_dir: KVDiskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate answers for one or more prompts in one batch."""
    from agentrt.engine.params import SamplingParams
    with user_errors():
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        engine = load_engine(model, dtype=dtype, **disk_options(weights, kv_disk_dir))
        t0 = time.perf_counter()
        outs = (engine.chat([[{"role": "user", "content": p}] for p in prompts], params) if chat
                else engine.generate(list(prompts), params))
        elapsed = time.perf_counter() - t0
    n_new = sum(len(o.token_ids) for o in outs)
    if as_json:
        return emit_json({
            "model": model, "weights": engine.weights, "chat": chat, "params": params.model_dump(), "elapsed_s": elapsed,
            "generated_tokens": n_new, "tokens_per_s": n_new / elapsed,
            "outputs": [{"prompt": p, "text": o.text, "token_ids": o.token_ids, "finish_reason": o.finish_reason,
                         "prompt_tokens": len(o.prompt_token_ids), "cached_tokens": o.num_cached_tokens}
                        for p, o in zip(prompts, outs)],
        })
    for p, o in zip(prompts, outs):
        print_answer(p, o.text)
    out.print(f"[dim]{n_new} tokens in {elapsed:.2f} s ({n_new / elapsed:.1f} tok/s)[/]")


@app.command(epilog="Example: agentrt demo   (what `make demo` runs)")
def demo(model: ModelOpt = DEFAULT_MODEL,
         max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="most tokens per answer")] = 96,
         dtype: EngineDTypeOpt = "auto") -> None:
    """Answer a few questions with the default model in one batched call."""
    from agentrt.engine.params import SamplingParams
    with user_errors():
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        engine = load_engine(model, dtype=dtype)
        err.print(f"[dim]answering {len(DEMO_QUESTIONS)} questions in one batch ...[/]")
        t0 = time.perf_counter()
        outs = engine.chat([[{"role": "user", "content": q}] for q in DEMO_QUESTIONS], params)
        elapsed = time.perf_counter() - t0
    for q, o in zip(DEMO_QUESTIONS, outs):
        print_answer(q, o.text)
    n_new = sum(len(o.token_ids) for o in outs)
    hit_rate = engine.stats()["prefix_hit_rate"]
    out.print(f"[bold]{model}[/]: {n_new} tokens generated in {elapsed:.2f} s = [bold]{n_new / elapsed:.1f} tok/s[/] "
              f"(batch of {len(outs)}, greedy) · prefix hit rate {hit_rate:.0%}")


def print_answer(question: str, answer: str) -> None:
    out.print(Panel(Text(answer.strip() or "(empty)"), title=Text(question, style="bold cyan"),
                    title_align="left", expand=False))


@bench_app.command("engine", epilog="Examples: agentrt bench engine --runs 3 · agentrt bench engine "
                                    "--cases decode1,prefill512 --json > bench.json · agentrt bench engine "
                                    "--dtype bfloat16 --transformers-dtypes float32,bfloat16")
def bench_engine(
    model: ModelOpt = DEFAULT_MODEL,
    runs: Annotated[int, typer.Option(min=1, help="measured runs per case and peer (median reported)")] = 3,
    as_json: JsonOpt = False,
    cases: Annotated[str | None, typer.Option(help="comma-separated subset: prefill512,prefill2048,"
                                                   "decode1,decode8,decode32,agents32")] = None,
    dtype: Annotated[DType, typer.Option(help="dtype of agentrt (and of transformers, unless --transformers-dtypes)")] = DType.float32,
    transformers_dtypes: Annotated[str | None, typer.Option(
        help="comma-separated dtypes to run transformers at, e.g. float32,bfloat16; targets use its best")] = None,
    weights: Annotated[str, typer.Option(help="agentrt's weights: auto (its default here: q4 on CPU for a GGUF "
                                              "model), q4, bf16 or fp32 (then --dtype is ignored for agentrt)")] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch and llama.cpp")] = 2,
    transformers: Annotated[bool, typer.Option(help="run the transformers peer (--no-transformers: agentrt and "
                                                    "llama.cpp only)")] = True,
    budget_s: Annotated[float, typer.Option(min=0, help="per case and peer: after the first measured run, "
                                                        "start none predicted to end past this many seconds")] = 20.0,
    save: Annotated[Path | None, typer.Option(help="also write the JSON object to this file")] = None,
) -> None:
    """agentrt vs transformers vs llama.cpp on the same weights, prompts and machine."""
    from agentrt.bench.engine_bench import METHOD, run_bench, select_cases
    from agentrt.bench.peers import build_peers
    from agentrt.bench.report import render_table, to_json

    with user_errors():
        selected = select_cases(cases)
        tf_dtypes = [DType(d.strip()).value for d in transformers_dtypes.split(",")] if transformers_dtypes else None
        if weights not in ("auto", "q4", "bf16", "fp32"):
            raise ValueError(f"--weights {weights!r}: choose auto, q4, bf16 or fp32")
        with err.status(f"loading {model} into agentrt, transformers and llama.cpp ..."):
            peers, absent = build_peers(model, dtype.value, threads, tf_dtypes, bench_weights(model, weights, dtype.value),
                                         transformers)
    for a in absent:
        err.print(f"[yellow]{a.name}: absent[/] ({a.reason})")
    results = run_bench(peers, selected, runs, budget_s, lambda m: err.print(m, markup=False, soft_wrap=True))
    from agentrt.engine.quant import cpu_capability
    ours = peers[0]
    settings = {"runs": runs, "budget_s": budget_s, "dtype": dtype.value, "threads": threads,
                "weights": ours.weights, "activations": str(ours.engine.dtype).removeprefix("torch."),
                "cpu_capability": cpu_capability(),
                "transformers_dtypes": (tf_dtypes or [dtype.value]) if transformers else [],
                "cases": [c.name for c in selected], "method": METHOD}
    report = to_json(model, results, peers, absent, settings)
    if save:
        save.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        return emit_json(report)
    out.print(f"CPU capability: {cpu_capability()} · torch {torch_version()} · agentrt weights {settings['weights']} "
              f"(activations {settings['activations']})")
    tf = f"transformers {'/'.join(settings['transformers_dtypes'])}" if transformers else "no transformers"
    out.print(render_table(results, peers, absent, runs, f"agentrt bench engine · {model} · agentrt {settings['weights']} · "
                                                         f"{tf} · {threads} threads"))


def bench_weights(model: str, weights: str, dtype: str) -> str:
    """auto: what the engine would pick on this machine (q4 on CPU for a GGUF model), else --dtype's dense format."""
    if weights != "auto":
        return weights
    from agentrt.engine import EngineConfig
    from agentrt.engine.loader import has_gguf
    cfg = EngineConfig()
    fmt = cfg.weight_format(cfg.torch_device(), has_gguf(model))
    return fmt if fmt == "q4" else {"float32": "fp32", "bfloat16": "bf16"}[dtype]


def torch_version() -> str:
    import torch
    return torch.__version__


