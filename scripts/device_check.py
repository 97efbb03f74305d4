"""GPU-path device check (issue 15), run by scripts/device_check.sh after the kernel tests.

Sections (each timed, each failing on its own without stopping the others):
  parity   greedy parity of the engine (Triton path) against transformers on a random-weight
           ~1B Llama (Llama-3.2-1B shape, default RoPE), bf16, plus an fp32 run as a tight check;
           prompts exercise chunked prefill, prefix-cache hits (context prefill kernel), batched
           decode (split-K kernel)
  kernel   paged decode attention (Triton) vs SDPA on pre-gathered K/V, and vs gather + SDPA,
           at batch 1/32/128 x context 1k/8k, Llama-3-8B heads (32 q, 8 kv, d 128), bf16
  engine   decode tok/s at batch 1/32/128 on a random-weight Llama-3-8B-shaped model: the engine
           end to end (eager; with graphs too if the engine exposes them), and the model forward
           eager vs replayed from agentrt.engine.cuda_graphs.DecodeGraphs
  prefetch how much of a host-tier prefetch (engine's `load` on a side stream, as the prefetch
           worker runs it) hides behind decode steps on the default stream

Prints a table per section and writes device_check.json into --out.
"""
from __future__ import annotations

import argparse
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
            torch.cuda.empty_cache()
            return res
        return run
    return deco


def table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def llama_config(kind: str):
    from transformers import LlamaConfig

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

    with torch.device("cuda"):
        return LLMEngine(loaded, EngineConfig(device="cuda", **cfg))


def random_state(config, std: float = 0.02, dtype=torch.bfloat16) -> dict:
    """HF-named random weights straight on the GPU (norms near 1)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    g = torch.Generator(device="cuda").manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = (1 + 0.1 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
        else:
            state[name] = (std * torch.randn(shape, generator=g, device="cuda")).to(dtype)
    return state


def sync_time(fn, iters: int, warmup: int = 3) -> float:
    """Seconds per call, CUDA-synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
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
    for dtype, tol in ((torch.bfloat16, 0.25), (torch.float32, 2e-3)):
        name = str(dtype).replace("torch.", "")
        torch.manual_seed(0)
        with torch.device("cuda"):
            ref = LlamaForCausalLM(cfg).to(dtype).eval()
        ref.config._attn_implementation = "sdpa"
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
            ids = torch.tensor([o.prompt_token_ids + o.token_ids], device="cuda")
            with torch.inference_mode():
                ref_logits = ref(ids).logits[0, len(o.prompt_token_ids) - 1:-1].float()
            eng_logits = torch.stack(o.logits).float().to("cuda")
            chosen = torch.tensor(o.token_ids, device="cuda")
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
        torch.cuda.empty_cache()
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

    h, kvh, d, bs = 32, 8, 128, 16

    def one(b: int, ctx: int) -> dict:
        nb = b * ctx // bs
        cache = torch.randn(2, nb + 1, bs, kvh, d, device="cuda", dtype=torch.bfloat16)
        tables = (torch.randperm(nb, device="cuda") + 1).view(b, ctx // bs).to(torch.int32)
        lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        k, v = gather_kv(cache, tables.long())                           # [b, kvh, ctx, d]
        qs = q.view(b, h, 1, d)
        tri = sync_time(lambda: kernels.paged_decode_attention(q, cache, tables, lens, out=out), 20)
        sdpa = sync_time(lambda: F.scaled_dot_product_attention(qs, k, v, enable_gqa=True), 20)
        both = sync_time(lambda: F.scaled_dot_product_attention(qs, *gather_kv(cache, tables.long()),
                                                                enable_gqa=True), 10)
        ref = F.scaled_dot_product_attention(qs.float(), k.float(), v.float(), enable_gqa=True).view(b, h, d)
        err = (kernels.paged_decode_attention(q, cache, tables, lens).float() - ref).abs().max().item()
        return dict(batch=b, context=ctx, splits=kernels.decode_splits(b, kvh, ctx, 64, q.device),
                    triton_us=tri * 1e6, sdpa_gathered_us=sdpa * 1e6, gather_plus_sdpa_us=both * 1e6,
                    kv_gb_s=2 * b * ctx * kvh * d * 2 / tri / 1e9, max_err=err)

    res = []
    for ctx in (1024, 8192):
        for b in (1, 32, 128):
            res.append(one(b, ctx))
            torch.cuda.empty_cache()
    rows = [[r["batch"], r["context"], r["splits"], r["triton_us"], r["sdpa_gathered_us"], r["gather_plus_sdpa_us"],
             r["sdpa_gathered_us"] / r["triton_us"], r["kv_gb_s"], r["max_err"]] for r in res]
    table(["batch", "context", "splits", "triton µs", "sdpa(gathered) µs", "gather+sdpa µs", "sdpa/triton",
           "triton KV GB/s", "max err"], rows)
    return {"rows": res, "ok": all(r["max_err"] < 2e-2 for r in res)}


# ------------------------------------------------------------------------------------------ engine decode
def decode_meta(b: int, ctx: int, block_size: int, max_blocks: int, dtype):
    """Decode-only metadata for b sequences at context ctx (its own token included), tables of
    distinct blocks; built directly (the runner is not needed for a forward-only timing)."""
    from agentrt.engine.attention import AttentionMetadata

    nbl = -(-ctx // block_size)
    tables = (torch.arange(b * nbl, device="cuda").view(b, nbl) + 1)
    slots = tables[:, (ctx - 1) // block_size] * block_size + (ctx - 1) % block_size
    lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
    return AttentionMetadata(slots, b, tables, torch.empty(0, dtype=dtype, device="cuda"), None, [], None,
                             decode_context_lens=lens, decode_full_tables=tables)


def engine_graph_switch():
    """How this engine turns CUDA graphs on/off, if it does (the runner wiring may land later)."""
    from agentrt.engine import EngineConfig

    fields = getattr(EngineConfig, "model_fields", {})
    for name, on in (("cuda_graphs", True), ("enforce_eager", False), ("use_cuda_graphs", True)):
        if name in fields:
            return name, on
    return None, None


@section("engine")
def engine_speed(steps: int, state_box: dict) -> dict:
    from agentrt.engine import SamplingParams
    from agentrt.engine.cuda_graphs import DecodeGraphs

    cfg = llama_config("8b")
    t0 = time.monotonic()
    state = random_state(cfg)
    loaded = loaded_model("random-8b", cfg, state)
    switch, on = engine_graph_switch()
    kw = dict(dtype="bfloat16", block_size=16, kv_cache_tokens=128 * 640, max_num_seqs=128,
              max_num_batched_tokens=8192, max_model_len=4096)
    engine = make_engine(loaded, **({switch: not on} if switch else {}), **kw)
    del state, loaded
    torch.cuda.empty_cache()
    build_s = time.monotonic() - t0
    print(f"8B-shaped engine built in {build_s:.1f} s; graph switch in EngineConfig: {switch or 'none yet'}")
    prompt_len = 128
    e2e = {}

    def engine_decode(eng, b):
        g = torch.Generator().manual_seed(b)
        for i in range(b):
            eng.add_request(torch.randint(2, cfg.vocab_size, (prompt_len,), generator=g).tolist(),
                            SamplingParams(max_tokens=steps + 8, ignore_eos=True))
        first: set[str] = set()
        while len(first) < b:                         # every prompt prefilled (its first token out)
            first.update(o.request_id for o in eng.step() if o.token_ids)
        eng.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            eng.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        for rid in list(eng.requests):
            eng.abort(rid)
        return b * steps / dt

    for b in (1, 32, 128):
        try:
            e2e[b] = engine_decode(engine, b)
        except Exception:
            traceback.print_exc()
            e2e[b] = float("nan")
    e2e_graph = {}
    if switch:
        del engine
        torch.cuda.empty_cache()
        state = random_state(cfg)
        engine = make_engine(loaded_model("random-8b", cfg, state), **{switch: on}, **kw)
        del state
        for b in (1, 32, 128):
            e2e_graph[b] = engine_decode(engine, b)

    # forward only: eager vs DecodeGraphs replay, on the engine's model and cache
    model, kv = engine.model, engine.runner.kv_cache
    ctx = prompt_len + 32
    max_blocks = 4096 // 16
    graphs = DecodeGraphs(model, kv, 16, max_batch=128, max_blocks=max_blocks, batch_sizes=[1, 32, 128])
    tg = time.monotonic()
    graphs.capture()
    capture_s = time.monotonic() - tg
    fwd, rows, ok = {}, [], True
    for b in (1, 32, 128):
        meta = decode_meta(b, ctx, 16, max_blocks, kv.dtype)
        ids = torch.randint(2, cfg.vocab_size, (b,), device="cuda")
        pos = torch.full((b,), ctx - 1, device="cuda")
        with torch.inference_mode():
            eager_h = model(ids, pos, kv, meta).clone()
            graph_h = graphs.run(ids, pos, meta).clone()
            diff = (eager_h.float() - graph_h.float()).abs().max().item()
            te = sync_time(lambda: model(ids, pos, kv, meta), 10)
            tgr = sync_time(lambda: graphs.run(ids, pos, meta), 10)
        ok &= diff < 5e-2
        fwd[b] = dict(eager_tok_s=b / te, graph_tok_s=b / tgr, eager_ms=te * 1e3, graph_ms=tgr * 1e3, max_diff=diff)
        rows.append([b, e2e.get(b, float("nan")), e2e_graph.get(b, "n/a"), b / te, b / tgr, te * 1e3, tgr * 1e3, diff])
    table(["batch", "engine tok/s (eager)", "engine tok/s (graphs)", "forward tok/s eager", "forward tok/s graphs",
           "eager ms/step", "graph ms/step", "graph vs eager max|Δh|"], rows)
    print(f"graph capture (3 sizes, 32 layers): {capture_s:.1f} s; decode context {ctx}, prompt {prompt_len}")
    state_box["engine"] = engine
    state_box["graphs"] = graphs
    return {"build_s": build_s, "capture_s": capture_s, "engine_tok_s": e2e, "engine_graph_tok_s": e2e_graph,
            "forward": fwd, "graph_switch": switch, "ok": ok}


# ------------------------------------------------------------------------------------------ prefetch overlap
@section("prefetch")
def prefetch_overlap(state_box: dict, blocks: int) -> dict:
    from agentrt.engine.runner import load

    engine = state_box.get("engine")
    if engine is None:
        raise RuntimeError("needs the engine section's model")
    model, kv = engine.model, engine.runner.kv_cache
    layers, _, num_blocks, bs, kvh, d = kv.shape
    host = torch.randn(blocks, layers, 2, bs, kvh, d, dtype=kv.dtype).pin_memory()     # the host tier's layout
    ids = list(range(num_blocks - blocks, num_blocks))                                  # blocks no step reads
    slots = list(range(blocks))
    side = torch.cuda.Stream()

    def copy_engine():                 # what the prefetch worker runs: runner.load on a side stream
        with torch.cuda.stream(side):
            load(kv, host, ids, slots, non_blocking=True)
        side.synchronize()

    flat = torch.empty(host.shape, dtype=kv.dtype, device="cuda")

    def copy_contiguous():             # the same bytes as one pinned contiguous DMA (the bound)
        with torch.cuda.stream(side):
            flat.copy_(host, non_blocking=True)
        side.synchronize()

    b, ctx = 32, 160
    meta = decode_meta(b, ctx, bs, 256, kv.dtype)
    tok = torch.randint(2, 1000, (b,), device="cuda")
    pos = torch.full((b,), ctx - 1, device="cuda")
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
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        th = threading.Thread(target=copy)
        th.start()
        for _ in range(n_steps):
            step()
        torch.cuda.synchronize()
        th.join()
        t_both = time.perf_counter() - t0
        alone = n_steps * t_step + t_copy
        hidden = max(0.0, min(1.0, (alone - t_both) / min(t_copy, n_steps * t_step)))
        mb = host.nbytes / 2 ** 20
        out[name] = dict(blocks=blocks, mbytes=mb, copy_ms=t_copy * 1e3, gb_s=host.nbytes / t_copy / 1e9,
                         step_ms=t_step * 1e3, steps=n_steps, together_ms=t_both * 1e3, hidden_fraction=hidden)
    table(["copy", "MiB", "copy ms", "GB/s", "step ms (b=32)", "steps", "alone ms", "together ms", "hidden"],
          [[k, v["mbytes"], v["copy_ms"], v["gb_s"], v["step_ms"], v["steps"], v["steps"] * v["step_ms"] + v["copy_ms"],
            v["together_ms"], f"{100 * v['hidden_fraction']:.0f}%"] for k, v in out.items()])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "out/device_check"))
    ap.add_argument("--only", default="parity,kernel,engine,prefetch")
    ap.add_argument("--parity-tokens", type=int, default=24)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--prefetch-blocks", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("device_check: no CUDA device", file=sys.stderr)
        return 3
    import triton

    import agentrt.engine.attention as attention

    RESULTS["env"] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
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
    RESULTS["seconds"] = round(time.monotonic() - t0, 1)
    RESULTS["failed"] = FAILED
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    print(f"\ndevice_check.py: {RESULTS['seconds']} s, failed sections: {FAILED or 'none'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
