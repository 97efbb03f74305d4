"""GPU-path device check (issue 15), run by scripts/device_check.sh after the kernel tests.

Sections (each timed, each failing on its own without stopping the others):
  parity   greedy parity of the engine (Triton path) against transformers on a random-weight
           ~1B Llama (Llama-3.2-1B shape, default RoPE), bf16, plus an fp32 run as a tight check;
           prompts exercise chunked prefill, prefix-cache hits (context prefill kernel), batched
           decode (split-K kernel)
  kernel   paged decode attention (Triton) vs SDPA on pre-gathered K/V, and vs gather + SDPA,
           at batch 1/32/128 x context 1k/8k, Llama-3-8B heads (32 q, 8 kv, d 128), bf16
  engine   decode tok/s at batch 1/32/128 on a random-weight Llama-3-8B-shaped model: the engine
           end to end without CUDA graphs, the model forward eager vs replayed from
           agentrt.engine.cuda_graphs.DecodeGraphs (and that both give the same hidden states),
           then (section engine_graphs) the engine end to end with graphs: through its config
           switch once it has one, else LLMEngine(runner=...) over GraphedDecodeModel
  prefetch how much of a host-tier prefetch (engine's `load` on a side stream, as the prefetch
           worker runs it) hides behind decode steps on the default stream

Prints a table per section and writes device_check.json into --out.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import threading
import time
import traceback

import torch

RESULTS: dict = {"sections": {}}
FAILED: list[str] = []
DEV = "cuda"
SMOKE = False          # --smoke-cpu: tiny shapes on CPU under Triton's interpreter, to test this script itself
BATCHES = (1, 32, 128)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


def section(name):
    def deco(fn):
        def run(*a, **kw):
            t0 = time.monotonic()
            print(f"\n=== {name} ===", flush=True)
            try:
                res = fn(*a, **kw)
                ok = res.pop("ok", True) if isinstance(res, dict) else True
            except Exception:                     # one section's failure must not hide the others
                traceback.print_exc()
                res, ok = {"error": traceback.format_exc(limit=3)}, False
            res = res or {}
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["ok"] = ok
            RESULTS["sections"][name] = res
            if not ok:
                FAILED.append(name)
            print(f"--- {name}: {'ok' if ok else 'FAILED'} ({res['seconds']} s)", flush=True)
            save()                                # after every section: a timeout keeps what ran
            gc.collect()
            empty_cache()
            return res
        return run
    return deco


def save() -> None:
    out = RESULTS.get("out")
    if out:
        os.makedirs(out, exist_ok=True)
        RESULTS["failed"] = FAILED
        with open(os.path.join(out, "device_check.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


def table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def llama_config(kind: str):
    from transformers import LlamaConfig

    if SMOKE:
        return LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                           rms_norm_eps=1e-5, tie_word_embeddings=kind == "1b", bos_token_id=0, eos_token_id=1,
                           pad_token_id=0)

    common = dict(vocab_size=128256, max_position_embeddings=16384, rms_norm_eps=1e-5, rope_theta=500000.0,
                  bos_token_id=0, eos_token_id=1, pad_token_id=0, attention_bias=False)
    if kind == "1b":      # Llama-3.2-1B shape (tied embeddings), default RoPE (llama3 scaling builds on CPU)
        return LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, **common)
    if kind == "8b":      # Llama-3-8B shape
        return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, **common)
    raise ValueError(kind)


def loaded_model(name, config, state):
    from agentrt.engine.loader import LoadedModel
    from agentrt.engine.tiny import byte_tokenizer

    return LoadedModel(name, config, state, byte_tokenizer(), "random weights (device check)")


def make_engine(loaded, **cfg):
    """An LLMEngine built with CUDA as the default device, so the fp32 copy of the weights the
    engine makes before casting lives on the GPU (an 8B model in fp32 on CPU takes minutes)."""
    from agentrt.engine import EngineConfig, LLMEngine

    with torch.device(DEV):
        return LLMEngine(loaded, EngineConfig(device=DEV, **cfg))


def random_state(config, std: float = 0.02, dtype=None) -> dict:
    """HF-named random weights straight on the GPU (norms near 1), in the engine's dtype."""
    dtype = dtype or getattr(torch, ENGINE_KW["dtype"])
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    g = torch.Generator(device=DEV).manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = (1 + 0.1 * torch.randn(shape, generator=g, device=DEV)).to(dtype)
        else:
            state[name] = (std * torch.randn(shape, generator=g, device=DEV)).to(dtype)
    return state


def sync_time(fn, iters: int, warmup: int = 3) -> float:
    """Seconds per call, CUDA-synchronised."""
    if SMOKE:
        iters, warmup = 1, 1
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


# ------------------------------------------------------------------------------------------ parity
@section("parity")
def parity(n_tokens: int) -> dict:
    from transformers import LlamaForCausalLM

    from agentrt.engine import SamplingParams

    cfg = llama_config("1b")
    g = torch.Generator().manual_seed(1)
    lens = [37, 64, 100, 129]
    prompts = [torch.randint(2, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    prompts += [prompts[2][:96] + torch.randint(2, cfg.vocab_size, (n,), generator=g).tolist() for n in (5, 40)]
    out, ok = {}, True
    runs = ((torch.float32, 1e-2),) if SMOKE else ((torch.bfloat16, 0.25), (torch.float32, 1e-2))
    for dtype, tol in runs:
        name = str(dtype).replace("torch.", "")
        torch.manual_seed(0)
        with torch.device(DEV):
            ref = LlamaForCausalLM(cfg).to(dtype).eval()
        loaded = loaded_model("random-1b", cfg, {k: v for k, v in ref.state_dict().items()
                                                 if not (cfg.tie_word_embeddings and k == "lm_head.weight")})
        engine = make_engine(loaded, dtype=name, block_size=16, kv_cache_tokens=8192, max_num_batched_tokens=64,
                             max_num_seqs=8)
        t0 = time.monotonic()
        params = SamplingParams(max_tokens=n_tokens, ignore_eos=True, return_logits=True)
        outs = engine.generate(prompts[:4], params)                  # chunked prefill, batched decode
        outs += engine.generate(prompts[4:], params)                 # prefix-cache hits on prompt 2
        gen_s = time.monotonic() - t0
        hits = engine.stats().get("prefix_hit_rate", "?")
        exact = total = 0
        worst_gap = max_dlogit = 0.0
        for o in outs:
            ids = torch.tensor([o.prompt_token_ids + o.token_ids], device=DEV)
            with torch.inference_mode():
                ref_logits = ref(ids).logits[0, len(o.prompt_token_ids) - 1:-1].float()
            eng_logits = torch.stack(o.logits).float().to(DEV)
            chosen = torch.tensor(o.token_ids, device=DEV)
            best = ref_logits.max(-1).values
            gap = (best - ref_logits.gather(1, chosen[:, None])[:, 0])   # 0 when the engine's token is the reference's argmax
            exact += int((ref_logits.argmax(-1) == chosen).sum())
            total += len(o.token_ids)
            worst_gap = max(worst_gap, gap.max().item())
            max_dlogit = max(max_dlogit, (eng_logits - ref_logits).abs().max().item())
        spread = ref_logits.std().item()
        good = worst_gap <= tol
        ok &= good
        out[name] = dict(greedy_exact=f"{exact}/{total}", worst_gap=worst_gap, max_abs_dlogit=max_dlogit,
                         logit_std=spread, tolerance=tol, generate_s=round(gen_s, 2), prefix_hit_rate=hits, ok=good)
        del engine, ref, loaded
        gc.collect()
        empty_cache()
    table(["dtype", "greedy = ref argmax", "worst ref-logit gap of engine token", "max |Δlogit|", "logit std", "tol", "ok"],
          [[k, v["greedy_exact"], v["worst_gap"], v["max_abs_dlogit"], v["logit_std"], v["tolerance"], v["ok"]]
           for k, v in out.items()])
    out["ok"] = ok
    return out


# ------------------------------------------------------------------------------------------ kernel speed
@section("kernel")
def kernel_speed() -> dict:
    import torch.nn.functional as F

    from agentrt.engine import kernels
    from agentrt.engine.attention import gather_kv

    h, kvh, d, bs = (6, 2, 16, 16) if SMOKE else (32, 8, 128, 16)
    dtype = torch.float32 if SMOKE else torch.bfloat16

    def one(b: int, ctx: int) -> dict:
        nb = b * ctx // bs
        cache = torch.randn(2, nb + 1, bs, kvh, d, device=DEV, dtype=dtype)
        tables = (torch.randperm(nb, device=DEV) + 1).view(b, ctx // bs).to(torch.int32)
        lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
        q = torch.randn(b, h, d, device=DEV, dtype=dtype)
        out = torch.empty_like(q)
        k, v = gather_kv(cache, tables.long())                           # [b, kvh, ctx, d]
        qs = q.view(b, h, 1, d)
        tri = sync_time(lambda: kernels.paged_decode_attention(q, cache, tables, lens, out=out), 20)
        sdpa = sync_time(lambda: F.scaled_dot_product_attention(qs, k, v, enable_gqa=True), 20)
        both = sync_time(lambda: F.scaled_dot_product_attention(qs, *gather_kv(cache, tables.long()),
                                                                enable_gqa=True), 10)
        r = min(b, 4)                                                     # fp32 math reference on a few rows
        ref = F.scaled_dot_product_attention(qs[:r].float(), k[:r].float(), v[:r].float(), enable_gqa=True)
        err = (kernels.paged_decode_attention(q, cache, tables, lens)[:r].float() - ref.view(r, h, d)).abs().max().item()
        return dict(batch=b, context=ctx, splits=kernels.decode_splits(b, kvh, ctx, 64, q.device),
                    triton_us=tri * 1e6, sdpa_gathered_us=sdpa * 1e6, gather_plus_sdpa_us=both * 1e6,
                    kv_gb_s=2 * b * ctx * kvh * d * 2 / tri / 1e9, max_err=err)

    res = []
    for ctx in ((64, 128) if SMOKE else (1024, 8192)):
        for b in BATCHES:
            res.append(one(b, ctx))
            empty_cache()
    rows = [[r["batch"], r["context"], r["splits"], r["triton_us"], r["sdpa_gathered_us"], r["gather_plus_sdpa_us"],
             r["sdpa_gathered_us"] / r["triton_us"], r["kv_gb_s"], r["max_err"]] for r in res]
    def prefill(rows_n: int, length: int) -> dict:       # fresh prompts: the prefill kernel vs SDPA per prompt
        nbl = length // bs
        cache = torch.randn(2, rows_n * nbl + 1, bs, kvh, d, device=DEV, dtype=dtype)
        tables = (torch.arange(rows_n * nbl, device=DEV) + 1).view(rows_n, nbl).to(torch.int32)
        i32 = dict(dtype=torch.int32, device=DEV)
        starts = torch.arange(rows_n, **i32) * length
        lens = torch.full((rows_n,), length, **i32)
        q = torch.randn(rows_n * length, h, d, device=DEV, dtype=dtype)
        out = torch.empty_like(q)
        kk = cache[0, 1:].reshape(rows_n, length, kvh, d).transpose(1, 2)
        vv = cache[1, 1:].reshape(rows_n, length, kvh, d).transpose(1, 2)
        qq = q.view(rows_n, length, h, d).transpose(1, 2)
        tri = sync_time(lambda: kernels.paged_prefill_attention(q, cache, tables, starts, lens, lens, length, out=out), 5)
        sdpa = sync_time(lambda: [F.scaled_dot_product_attention(qq[i:i + 1], kk[i:i + 1], vv[i:i + 1], is_causal=True,
                                                                 enable_gqa=True) for i in range(rows_n)], 5)
        ref = F.scaled_dot_product_attention(qq.float(), kk.float(), vv.float(), is_causal=True, enable_gqa=True)
        err = (out.view(rows_n, length, h, d).transpose(1, 2).float() - ref).abs().max().item()
        return dict(prompts=rows_n, length=length, triton_us=tri * 1e6, sdpa_each_us=sdpa * 1e6, max_err=err)

    pre = [prefill(n, L) for n, L in (((2, 32), (3, 64)) if SMOKE else ((1, 2048), (32, 256), (128, 128)))]
    empty_cache()
    table(["fresh prompts", "length", "prefill kernel µs", "SDPA per prompt µs", "sdpa/triton", "max err"],
          [[r["prompts"], r["length"], r["triton_us"], r["sdpa_each_us"], r["sdpa_each_us"] / r["triton_us"],
            r["max_err"]] for r in pre])
    table(["batch", "context", "splits", "triton µs", "sdpa(gathered) µs", "gather+sdpa µs", "sdpa/triton",
           "triton KV GB/s", "max err"], rows)
    return {"rows": res, "prefill": pre, "ok": all(r["max_err"] < 2e-2 for r in res + pre)}


# ------------------------------------------------------------------------------------------ engine decode
def decode_meta(b: int, ctx: int, block_size: int, max_blocks: int, dtype):
    """Decode-only metadata for b sequences at context ctx (its own token included), tables of
    distinct blocks; built directly (the runner is not needed for a forward-only timing)."""
    from agentrt.engine.attention import AttentionMetadata

    nbl = -(-ctx // block_size)
    tables = (torch.arange(b * nbl, device=DEV).view(b, nbl) + 1)
    slots = tables[:, (ctx - 1) // block_size] * block_size + (ctx - 1) % block_size
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    return AttentionMetadata(slots, b, tables, torch.empty(0, dtype=dtype, device=DEV), None, [], None,
                             decode_context_lens=lens, decode_full_tables=tables)


ENGINE_KW = dict(dtype="bfloat16", block_size=16, kv_cache_tokens=128 * 640, max_num_seqs=128,
                 max_num_batched_tokens=8192, max_model_len=4096)
PROMPT_LEN = 128


def engine_graph_switch():
    """How this engine turns CUDA graphs on/off in its config, if it does (once the runner wiring lands)."""
    from agentrt.engine import EngineConfig

    fields = getattr(EngineConfig, "model_fields", {})
    for name, on in (("cuda_graphs", True), ("enforce_eager", False), ("use_cuda_graphs", True)):
        if name in fields:
            return name, on
    return None, None


def build_engine_model(loaded, max_positions: int, dtype: torch.dtype, device: torch.device):
    """The engine's own model over `loaded` (the runner's build_model where it exists)."""
    try:
        from agentrt.engine.runner import build_model
    except ImportError:
        build_model = None
    if build_model is not None:
        return build_model(loaded, max_positions, dtype, device)
    from agentrt.engine.model import LlamaModel

    model = LlamaModel(loaded.config, max_positions=max_positions)
    model.load_hf_state_dict(loaded.state_dict)
    cos, sin = model.rope_cos, model.rope_sin
    model = model.to(device=device, dtype=dtype).eval()
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    return model


def graphed_runner_factory(loaded, dtype: torch.dtype, max_batch: int):
    """A runner factory for LLMEngine(runner=...): the torch ModelRunner over the model wrapped
    in GraphedDecodeModel (decode-only steps replay CUDA graphs). None when the engine takes no
    runner factory."""
    import inspect

    from agentrt.engine import LLMEngine
    from agentrt.engine.cuda_graphs import GraphedDecodeModel
    from agentrt.engine.runner import ModelRunner

    if "runner" not in inspect.signature(LLMEngine.__init__).parameters:
        return None
    device = torch.device(DEV)

    def factory(layout):
        model = build_engine_model(loaded, layout.max_model_len, dtype, device)
        wrapped = GraphedDecodeModel(model, max_batch=max_batch, max_blocks=-(-layout.max_model_len // layout.block_size),
                                     eager=SMOKE)
        runner = ModelRunner(wrapped, layout.num_blocks, layout.block_size, dtype, device, layout.host_slots)
        t0 = time.monotonic()
        wrapped.capture(runner.kv_cache)
        print(f"captured decode graphs at {wrapped.graphs.batch_sizes} in {time.monotonic() - t0:.1f} s")
        return runner

    return factory


def engine_decode(eng, b: int, steps: int, vocab: int) -> float:
    """Decode tok/s of the engine end to end (scheduling, metadata, forward, sampling) at batch b:
    b prompts of PROMPT_LEN tokens prefilled first, then `steps` decode-only steps timed."""
    from agentrt.engine import SamplingParams

    g = torch.Generator().manual_seed(b)
    for _ in range(b):
        eng.add_request(torch.randint(2, vocab, (PROMPT_LEN,), generator=g).tolist(),
                        SamplingParams(max_tokens=steps + 8, ignore_eos=True))
    first: set[str] = set()
    while len(first) < b:                         # every prompt prefilled (its first token out)
        first.update(o.request_id for o in eng.step() if o.token_ids)
    eng.step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        eng.step()
    sync()
    dt = time.perf_counter() - t
    for rid in list(eng.requests):
        eng.abort(rid)
    return b * steps / dt


@section("engine")
def engine_speed(steps: int, box: dict) -> dict:
    from agentrt.engine.cuda_graphs import DecodeGraphs

    cfg = llama_config("8b")
    t0 = time.monotonic()
    switch, on = engine_graph_switch()
    engine = make_engine(loaded_model("random-8b", cfg, random_state(cfg)), **({switch: not on} if switch else {}),
                         **ENGINE_KW)
    empty_cache()
    build_s = time.monotonic() - t0
    print(f"{'tiny (smoke)' if SMOKE else '8B-shaped'} engine built in {build_s:.1f} s; graph switch in EngineConfig: {switch or 'none'}")
    e2e = {}
    for b in BATCHES:
        e2e[b] = engine_decode(engine, b, steps, cfg.vocab_size)
        print(f"  engine eager, batch {b}: {e2e[b]:.0f} tok/s", flush=True)

    # forward only: eager vs DecodeGraphs replay, on the engine's model and cache
    model, kv = engine.runner.model, engine.runner.kv_cache
    ctx = PROMPT_LEN + 32
    max_blocks = ENGINE_KW["max_model_len"] // 16
    graphs = DecodeGraphs(model, kv, 16, max_batch=BATCHES[-1], max_blocks=max_blocks, batch_sizes=list(BATCHES),
                          eager=SMOKE)
    tg = time.monotonic()
    graphs.capture()
    capture_s = time.monotonic() - tg
    fwd, rows, ok = {}, [], True
    for b in BATCHES:
        meta = decode_meta(b, ctx, 16, max_blocks, kv.dtype)
        ids = torch.randint(2, cfg.vocab_size, (b,), device=DEV)
        pos = torch.full((b,), ctx - 1, device=DEV)
        with torch.inference_mode():
            eager_h = model(ids, pos, kv, meta).clone()
            graph_h = graphs.run(ids, pos, meta).clone()
            # relative: eager and graph runs may split the context differently (table widths differ)
            diff = ((eager_h.float() - graph_h.float()).abs().max() / eager_h.float().abs().max()).item()
            te = sync_time(lambda: model(ids, pos, kv, meta), 10)
            tgr = sync_time(lambda: graphs.run(ids, pos, meta), 10)
        ok &= diff < 2e-2
        fwd[b] = dict(eager_tok_s=b / te, graph_tok_s=b / tgr, eager_ms=te * 1e3, graph_ms=tgr * 1e3, max_diff=diff)
        rows.append([b, e2e[b], b / te, b / tgr, te * 1e3, tgr * 1e3, diff])
    table(["batch", "engine tok/s (eager)", "forward tok/s eager", "forward tok/s graphs", "eager ms/step",
           "graph ms/step", "graph vs eager max|Δh|/max|h|"], rows)
    print(f"DecodeGraphs capture ({len(BATCHES)} sizes, {cfg.num_hidden_layers} layers): {capture_s:.1f} s; "
          f"decode context {ctx}")
    box.update(engine=engine, graphs=graphs, cfg=cfg, switch=(switch, on))
    return {"build_s": build_s, "capture_s": capture_s, "engine_tok_s": e2e, "forward": fwd, "ok": ok}


@section("engine_graphs")
def engine_graphs_speed(steps: int, box: dict) -> dict:
    """The engine end to end with decode graphs: through its own config switch when it has one,
    else through LLMEngine(runner=...) with GraphedDecodeModel."""
    cfg = box.get("cfg") or llama_config("8b")
    switch, on = box.get("switch") or engine_graph_switch()
    box.clear()                                    # free the eager engine first (16 GB of weights)
    gc.collect()
    empty_cache()
    loaded = loaded_model("random-8b", cfg, random_state(cfg))
    if switch:
        engine, how = make_engine(loaded, **{switch: on}, **ENGINE_KW), f"EngineConfig({switch}={on})"
    else:
        factory = graphed_runner_factory(loaded, getattr(torch, ENGINE_KW["dtype"]), ENGINE_KW["max_num_seqs"])
        if factory is None:
            print("this LLMEngine takes neither a graph switch nor a runner factory: skipped")
            return {"skipped": True}
        with torch.device(DEV):
            from agentrt.engine import EngineConfig, LLMEngine
            engine = LLMEngine(loaded, EngineConfig(device=DEV, **ENGINE_KW), runner=factory)
        how = "LLMEngine(runner=ModelRunner(GraphedDecodeModel(model)))"
    del loaded
    res = {}
    for b in BATCHES:
        res[b] = engine_decode(engine, b, steps, cfg.vocab_size)
    graphs = getattr(getattr(engine.runner, "model", None), "graphs", None)
    replays = getattr(graphs, "replays", "?")
    table(["batch", "engine tok/s (graphs)"], [[b, v] for b, v in res.items()])
    print(f"via {how}; graph replays: {replays}")
    ok = replays == "?" or replays > 0
    del engine
    empty_cache()
    return {"engine_graph_tok_s": res, "via": how, "replays": replays, "ok": ok}


# ------------------------------------------------------------------------------------------ prefetch overlap
@section("prefetch")
def prefetch_overlap(state_box: dict, blocks: int) -> dict:
    from agentrt.engine.runner import load

    engine = state_box.get("engine")
    if engine is None:
        raise RuntimeError("needs the engine section's model")
    model, kv = engine.runner.model, engine.runner.kv_cache
    layers, _, num_blocks, bs, kvh, d = kv.shape
    host = torch.randn(blocks, layers, 2, bs, kvh, d, dtype=kv.dtype)                 # the host tier's layout
    if DEV == "cuda":
        host = host.pin_memory()
    ids = list(range(num_blocks - blocks, num_blocks))                                  # blocks no step reads
    slots = list(range(blocks))
    side = torch.cuda.Stream() if DEV == "cuda" else None

    def on_side():
        return torch.cuda.stream(side) if side is not None else contextlib.nullcontext()

    def side_sync():
        if side is not None:
            side.synchronize()

    def copy_engine():                 # what the prefetch worker runs: runner.load on a side stream
        with on_side():
            load(kv, host, ids, slots, non_blocking=True)
        side_sync()

    flat = torch.empty(host.shape, dtype=kv.dtype, device=DEV)

    def copy_contiguous():             # the same bytes as one pinned contiguous DMA (the bound)
        with on_side():
            flat.copy_(host, non_blocking=True)
        side_sync()

    b, ctx = BATCHES[1], PROMPT_LEN + 32
    meta = decode_meta(b, ctx, bs, ENGINE_KW["max_model_len"] // bs, kv.dtype)
    tok = torch.randint(2, 300, (b,), device=DEV)
    pos = torch.full((b,), ctx - 1, device=DEV)
    graphs = state_box.get("graphs")

    def step():
        with torch.inference_mode():
            if graphs is not None:
                graphs.run(tok, pos, meta)
            else:
                model(tok, pos, kv, meta)

    out = {}
    for name, copy in (("engine load()", copy_engine), ("contiguous pinned", copy_contiguous)):
        t_copy = sync_time(copy, 3, warmup=1)
        t_step = sync_time(step, 10)
        n_steps = max(1, math.ceil(t_copy / t_step))
        sync()
        t0 = time.perf_counter()
        th = threading.Thread(target=copy)
        th.start()
        for _ in range(n_steps):
            step()
        sync()
        th.join()
        t_both = time.perf_counter() - t0
        alone = n_steps * t_step + t_copy
        hidden = max(0.0, min(1.0, (alone - t_both) / min(t_copy, n_steps * t_step)))
        mb = host.nbytes / 2 ** 20
        out[name] = dict(blocks=blocks, mbytes=mb, copy_ms=t_copy * 1e3, gb_s=host.nbytes / t_copy / 1e9,
                         step_ms=t_step * 1e3, steps=n_steps, together_ms=t_both * 1e3, hidden_fraction=hidden)
    table(["copy", "MiB", "copy ms", "GB/s", f"step ms (b={b})", "steps", "alone ms", "together ms", "hidden"],
          [[k, v["mbytes"], v["copy_ms"], v["gb_s"], v["step_ms"], v["steps"], v["steps"] * v["step_ms"] + v["copy_ms"],
            v["together_ms"], f"{100 * v['hidden_fraction']:.0f}%"] for k, v in out.items()])
    return out


def smoke_settings(args) -> None:
    """Tiny everything, on CPU: the kernels under the interpreter, DecodeGraphs in eager mode."""
    global DEV, SMOKE, BATCHES, PROMPT_LEN
    os.environ["TRITON_INTERPRET"] = "1"
    import agentrt.engine.attention as attention

    attention.set_attention_backend("triton")
    DEV, SMOKE, BATCHES, PROMPT_LEN = "cpu", True, (1, 3), 8
    ENGINE_KW.update(dtype="float32", kv_cache_tokens=1024, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256)
    args.parity_tokens, args.decode_steps, args.prefetch_blocks = 3, 2, 4
    args.out = args.out if args.out != "out/device_check" else "out/device_check_smoke"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out/device_check"))
    ap.add_argument("--only", default="parity,kernel,engine,prefetch", help="sections, comma-separated")
    ap.add_argument("--parity-tokens", type=int, default=24)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--prefetch-blocks", type=int, default=256)
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="tiny shapes on CPU under Triton's interpreter: tests this script, measures nothing")
    args = ap.parse_args()
    if args.smoke_cpu:
        smoke_settings(args)
    elif not torch.cuda.is_available():
        print("device_check: no CUDA device", file=sys.stderr)
        return 3
    import triton

    import agentrt.engine.attention as attention

    RESULTS["out"] = args.out
    RESULTS["env"] = dict(gpu=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)", torch=torch.__version__, triton=triton.__version__,
                          python=sys.version.split()[0], attention_backend=attention.attention_backend())
    print(RESULTS["env"])
    only = set(args.only.split(","))
    box: dict = {}
    t0 = time.monotonic()
    if "parity" in only:
        parity(args.parity_tokens)
    if "kernel" in only:
        kernel_speed()
    if "engine" in only or "prefetch" in only:
        engine_speed(args.decode_steps, box)
    if "prefetch" in only:
        prefetch_overlap(box, args.prefetch_blocks)
    if "engine" in only:
        engine_graphs_speed(args.decode_steps, box)
    RESULTS["seconds"] = round(time.monotonic() - t0, 1)
    save()
    print(f"\ndevice_check.py: {RESULTS['seconds']} s, failed sections: {FAILED or 'none'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
