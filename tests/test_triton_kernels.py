"""Triton kernels of the GPU path against a torch reference (K/V gathered through the block
table, explicit fp32 softmax).

Without CUDA they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set here
before triton is first imported); on a GPU machine the same tests run on CUDA (the device
check runs this file). The interpreter is slow and computes bf16 wrongly, so shapes are small
and the dtypes fp32/fp16.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from agentrt.engine import attention  # noqa: E402
from agentrt.engine import kernels  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")
TOL = {torch.float32: 2e-5 if not CUDA else 1e-4, torch.float16: 3e-3}


# ------------------------------------------------------------------------------------------ helpers
def make_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype, seed: int = 0, layers: int = 2):
    """A layer's view [2, blocks, bs, kvh, d] of a [layers, 2, ...] cache, as the model gets it."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(layers, 2, num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype).to(DEV)
    return full[layers - 1]


def make_tables(lens: list[int], block_size: int, num_blocks: int, shared_blocks: int = 0, seed: int = 0,
                width: int | None = None) -> torch.Tensor:
    """Block tables with distinct, shuffled block ids per row; the first `shared_blocks` are the
    same for every row (a shared prefix); unused entries are padding 0."""
    g = torch.Generator().manual_seed(seed + 1)
    need = [-(-n // block_size) for n in lens]
    width = width or max(need)
    perm = torch.randperm(num_blocks - 1, generator=g) + 1              # block 0 left as the pad id
    shared, rest = perm[:shared_blocks].tolist(), perm[shared_blocks:].tolist()
    rows = []
    for n in need:
        own = [rest.pop() for _ in range(n - shared_blocks)]
        row = (shared + own)[:n]
        rows.append(row + [0] * (width - len(row)))
    return torch.tensor(rows, dtype=torch.int32, device=DEV)


def gather(cache, table_row, n):
    """K, V of the first n tokens of one row: [n, kvh, d] each (fp32)."""
    blocks = table_row[: -(-n // cache.shape[2])].long()
    k = cache[0, blocks].reshape(-1, *cache.shape[3:])[:n].float()
    v = cache[1, blocks].reshape(-1, *cache.shape[3:])[:n].float()
    return k, v


def ref_attention(q, k, v, q_pos):
    """q: [t, h, d] fp32, k, v: [n, kvh, d]; query i sees keys 0 ..= q_pos[i]. -> [t, h, d]."""
    h, kvh = q.shape[1], k.shape[1]
    kk = k.repeat_interleave(h // kvh, dim=1)
    vv = v.repeat_interleave(h // kvh, dim=1)
    s = torch.einsum("thd,nhd->htn", q.float(), kk) / math.sqrt(q.shape[-1])
    seen = torch.arange(k.shape[0], device=q.device).view(1, -1) <= q_pos.view(-1, 1)
    s = s.masked_fill(~seen.unsqueeze(0), float("-inf"))
    return torch.einsum("htn,nhd->thd", s.softmax(-1), vv)


def ref_decode(q, cache, tables, lens):
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for b, n in enumerate(lens):
        if n:
            k, v = gather(cache, tables[b], n)
            out[b] = ref_attention(q[b:b + 1].float(), k, v, torch.tensor([n - 1], device=q.device))[0]
    return out


# ------------------------------------------------------------------------------------------ KV store
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_store_kv_writes_slots_and_skips_negative(block_size, dtype):
    kvh, d, n = 3, 16, 11
    cache = make_cache(6, block_size, kvh, d, dtype)
    before = cache.clone()
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(n, 4 + 2 * kvh, d, generator=g).to(dtype).to(DEV)   # k, v as strided slices, as the model has them
    k, v = qkv[:, 4:4 + kvh], qkv[:, 4 + kvh:]
    slots = torch.randperm(6 * block_size, generator=g)[:n]
    slots[[2, 7]] = -1
    kernels.store_kv(cache, k, v, slots.to(DEV))
    expect = before.clone()
    flat = expect.view(2, -1, kvh, d)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            flat[0, s], flat[1, s] = k[t], v[t]
    assert torch.equal(cache, expect)
    assert not torch.equal(cache, before)


# ------------------------------------------------------------------------------------------ decode
DECODE_CASES = [
    # block_size, heads, kv_heads, context lengths, shared prefix blocks, splits
    (16, 2, 2, [1, 16, 37], 0, 1),          # GQA group 1; a multiple of the block size and not
    (16, 6, 2, [33, 64, 70], 2, 3),         # group 3 (SmolLM2's), shared prefix, several splits
    (32, 8, 2, [5, 64, 97], 0, 2),          # group 4, block 32
    (32, 6, 2, [40, 96, 65], 1, 4),         # group 3, block 32, shared prefix, more splits than some rows need
]


@pytest.mark.parametrize("block_size,heads,kv_heads,lens,shared,splits", DECODE_CASES)
def test_decode_matches_reference(block_size, heads, kv_heads, lens, shared, splits):
    d = 16
    cache = make_cache(16, block_size, kv_heads, d, torch.float32, seed=block_size + heads)
    tables = make_tables(lens, block_size, 16, shared, seed=heads, width=max(-(-n // block_size) for n in lens) + 1)
    q = torch.randn(len(lens), heads, d, generator=torch.Generator().manual_seed(5)).to(DEV)
    ref = ref_decode(q, cache, tables, lens)
    out = kernels.paged_decode_attention(q, cache, tables, torch.tensor(lens, dtype=torch.int32, device=DEV),
                                         num_splits=splits, tile_n=16)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])


def test_decode_fp16_int64_tables_and_zero_length_rows():
    """fp16 cache, the engine's int64 tables, and a padding row (length 0, as a CUDA graph pads
    a batch): its output is 0, the others match."""
    bs, heads, kvh, d = 16, 4, 1, 32
    lens = [50, 0, 17]
    cache = make_cache(12, bs, kvh, d, torch.float16, seed=7)
    tables = make_tables(lens, bs, 12).long()
    q = torch.randn(3, heads, d, generator=torch.Generator().manual_seed(8)).to(torch.float16).to(DEV)
    ref = ref_decode(q, cache, tables, lens)
    for splits in (1, 2):
        out = kernels.paged_decode_attention(q, cache, tables, torch.tensor(lens, dtype=torch.int32, device=DEV),
                                             num_splits=splits, tile_n=16)
        assert out.dtype == torch.float16
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        torch.testing.assert_close(out.float(), ref, atol=TOL[torch.float16], rtol=TOL[torch.float16])


def test_decode_split_count_does_not_change_the_result():
    bs, heads, kvh, d = 16, 6, 2, 16
    lens = [130, 45]
    cache = make_cache(20, bs, kvh, d, torch.float32, seed=9)
    tables = make_tables(lens, bs, 20, shared_blocks=2)
    q = torch.randn(2, heads, d, generator=torch.Generator().manual_seed(10)).to(DEV)
    clens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    outs = [kernels.paged_decode_attention(q, cache, tables, clens, num_splits=s, tile_n=16) for s in (1, 3, 9)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(outs[0], ref_decode(q, cache, tables, lens), atol=2e-5, rtol=2e-5)


def test_decode_split_heuristic_depends_on_shapes_only():
    assert kernels.decode_splits(1, 8, 8192, 64, torch.device("cpu")) == 1          # CPU: one "SM"
    assert kernels.decode_splits(128, 8, 1024, 64, torch.device("cpu")) == 1


# ------------------------------------------------------------------------------------------ prefill over context
PREFILL_CASES = [
    # block_size, heads, kv_heads, [(cached context, chunk length)], shared prefix blocks
    (16, 2, 2, [(16, 5), (7, 20)], 0),          # group 1; context a multiple of the block size and not
    (16, 6, 2, [(32, 9), (32, 17)], 2),         # group 3, two chunks after one shared cached prefix
    (32, 8, 2, [(40, 13), (0, 6)], 0),          # group 4, block 32; a row with no context (causal only)
]


@pytest.mark.parametrize("block_size,heads,kv_heads,rows,shared", PREFILL_CASES)
def test_prefill_over_paged_context_matches_reference(block_size, heads, kv_heads, rows, shared):
    d = 16
    kv_lens = [c + n for c, n in rows]
    cache = make_cache(16, block_size, kv_heads, d, torch.float32, seed=heads)
    tables = make_tables(kv_lens, block_size, 16, shared, seed=block_size)
    q_lens = [n for _, n in rows]
    starts = [3 + sum(q_lens[:i]) for i in range(len(rows))]          # packed after 3 decode tokens
    total = 3 + sum(q_lens)
    q = torch.randn(total, heads, d, generator=torch.Generator().manual_seed(11)).to(DEV)
    out = torch.full_like(q, 7.0)
    kernels.paged_prefill_attention(q, cache, tables, torch.tensor(starts, dtype=torch.int32, device=DEV),
                                    torch.tensor(q_lens, dtype=torch.int32, device=DEV),
                                    torch.tensor(kv_lens, dtype=torch.int32, device=DEV), max(q_lens), out=out,
                                    tile_t=None, tile_n=16)
    assert torch.equal(out[:3], torch.full_like(out[:3], 7.0)), "rows outside the chunks were written"
    for r, (c, n) in enumerate(rows):
        k, v = gather(cache, tables[r], c + n)
        ref = ref_attention(q[starts[r]:starts[r] + n], k, v, torch.arange(c, c + n, device=DEV))
        torch.testing.assert_close(out[starts[r]:starts[r] + n], ref, atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------------------------------ the engine on the Triton path
@pytest.fixture
def triton_attention():
    before = attention.attention_backend()
    attention.set_attention_backend("triton")
    yield
    attention.set_attention_backend(before)


def test_engine_on_triton_path_matches_transformers(make_engine, tiny_ref, ref_logits, triton_attention, monkeypatch):
    """The tiny engine with every attention call on the kernels: prefix-cache hits and chunked
    prefill (context prefill kernel), decodes (split-K kernel), the KV store kernel; its logits
    match transformers' at every generated position."""
    from agentrt.engine import SamplingParams

    calls = {"decode": 0, "prefill": 0}
    for name, attr in (("decode", "paged_decode_attention"), ("prefill", "paged_prefill_attention")):
        def spy(*a, _fn=getattr(kernels, attr), _name=name, **kw):
            calls[_name] += 1
            return _fn(*a, **kw)
        monkeypatch.setattr(kernels, attr, spy)
    shared = []
    derive = attention.decode_kernel_inputs

    def spy_inputs(meta, block_size):
        shared.append(meta.decode_shared is not None)
        return derive(meta, block_size)

    monkeypatch.setattr(attention, "decode_kernel_inputs", spy_inputs)
    fresh_rows = []
    fresh = attention.fresh_kernel_inputs

    def spy_fresh(meta, block_size):
        fresh_rows.append(len(meta.fresh))
        return fresh(meta, block_size)

    monkeypatch.setattr(attention, "fresh_kernel_inputs", spy_fresh)
    monkeypatch.setattr(attention, "FRESH_KERNEL_MIN_ROWS", 2)      # one fresh prefill: SDPA; more: the kernel
    engine = make_engine(block_size=16, kv_cache_tokens=1024, max_num_batched_tokens=64, device=DEV.type)
    system = [(7 * j) % 250 for j in range(70)]          # >= 4 shared blocks: the CPU runner's cascade metadata
    prompts = [system + [(i * 31 + j) % 250 for j in range(4 + 5 * i)] for i in range(3)]
    short = [[(i * 13 + j * 5) % 250 for j in range(10 + 7 * i)] for i in range(2)]
    params = SamplingParams(max_tokens=3, ignore_eos=True, return_logits=True)
    outs = engine.generate(short + prompts[:1], params)            # 3 fresh rows in one step, then chunks
    outs += engine.generate(prompts[1:], params)                   # prefix-cache hits
    assert calls["decode"] and calls["prefill"], calls
    assert fresh_rows and max(fresh_rows) >= 2, fresh_rows
    assert any(shared) or CUDA, "no decode step had shared leading blocks"
    for out in outs:
        got = torch.stack(out.logits).float().cpu()
        ref = ref_logits(tiny_ref, out.prompt_token_ids, out.token_ids)
        assert (got - ref).abs().max().item() < (1e-4 if not CUDA else 1e-3)


def test_cpu_default_stays_on_torch():
    cache = torch.zeros(2, 1, 16, 1, 16)
    if attention.attention_backend() == "auto":
        assert not attention.use_triton(cache)


# ------------------------------------------------------------------------------------------ decode graphs
@pytest.mark.parametrize("eager", [True] + ([False] if CUDA else []))
def test_decode_graphs_pad_a_batch_without_touching_the_cache(make_engine, triton_attention, eager):
    """A batch of 3 decodes through DecodeGraphs (padded to 4: slot -1, context 0) gives the
    hidden states of the plain forward, and the padding row writes nothing into the cache. The
    step's metadata is given as the runner builds it (masks, no lengths)."""
    from agentrt.engine.attention import AttentionMetadata
    from agentrt.engine.cuda_graphs import DecodeGraphs, GraphedDecodeModel

    engine = make_engine(block_size=16, kv_cache_tokens=512, device=DEV.type)
    model, kv = engine.runner.model, engine.runner.kv_cache
    kv.copy_(torch.randn(kv.shape, generator=torch.Generator().manual_seed(4)).to(kv))
    lens = [20, 37, 5]
    tables = make_tables(lens, 16, kv.shape[2], seed=2).long()
    used = tables.shape[1]
    lens_t = torch.tensor(lens, device=DEV)
    slots = tables[torch.arange(3, device=DEV), (lens_t - 1) // 16] * 16 + (lens_t - 1) % 16
    keys = torch.arange(used * 16, device=DEV)
    mask = torch.zeros(3, 1, 1, used * 16, dtype=kv.dtype, device=DEV)
    mask.masked_fill_((keys >= lens_t.unsqueeze(1))[:, None, None, :], float("-inf"))

    def meta():
        return AttentionMetadata(slots, 3, tables, mask, None, [], None)

    ids = torch.tensor([5, 77, 200], device=DEV)
    pos = lens_t - 1
    with torch.inference_mode():
        plain = model(ids, pos, kv, meta()).clone()
        after_plain = kv.clone()
        graphs = DecodeGraphs(model, kv, 16, max_batch=4, max_blocks=8, batch_sizes=[2, 4], eager=eager)
        graphs.capture()
        assert graphs.can_run(ids, meta()) and graphs.graph_size(3) == 4
        padded = graphs.run(ids, pos, meta()).clone()
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    # the real rows rewrite their slots (equal up to a batch-4 vs batch-3 matmul's rounding); the
    # padding row (slot -1) writes nothing: not where a clamped slot would land (block 0), nowhere
    assert torch.equal(kv[:, :, 0], after_plain[:, :, 0]), "the padding row wrote into the cache"
    torch.testing.assert_close(kv, after_plain, atol=1e-5, rtol=1e-5)
    assert not graphs.can_run(torch.zeros(5, dtype=torch.long, device=DEV), meta())

    wrapped = GraphedDecodeModel(model, max_batch=4, max_blocks=8, batch_sizes=[4], eager=eager)
    with torch.inference_mode():
        again = wrapped(ids, pos, kv, meta()).clone()
    assert wrapped.graphs is not None and wrapped.graphs.replays == 1
    torch.testing.assert_close(again, plain, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ CUDA only: real shapes, bf16
@pytest.mark.skipif(not CUDA, reason="bf16 and real shapes need a GPU (the interpreter computes bf16 wrongly)")
@pytest.mark.parametrize("group", [1, 3, 4])
def test_cuda_bf16_real_shapes(group):
    bs, kvh, d = 16, 8, 128
    lens = [1, 300, 1000, 2049]
    cache = make_cache(600, bs, kvh, d, torch.bfloat16, seed=group)
    tables = make_tables(lens, bs, 600, shared_blocks=1, seed=group)
    q = torch.randn(len(lens), kvh * group, d, device=DEV).to(torch.bfloat16)
    out = kernels.paged_decode_attention(q, cache, tables, torch.tensor(lens, dtype=torch.int32, device=DEV))
    torch.testing.assert_close(out.float(), ref_decode(q, cache, tables, lens), atol=2e-2, rtol=2e-2)
    rows = [(256, 100), (0, 333), (1000, 1)]
    kv_lens = [c + n for c, n in rows]
    tables = make_tables(kv_lens, bs, 600, seed=group + 1)
    q_lens = [n for _, n in rows]
    starts = [sum(q_lens[:i]) for i in range(3)]
    q = torch.randn(sum(q_lens), kvh * group, d, device=DEV).to(torch.bfloat16)
    i32 = dict(dtype=torch.int32, device=DEV)
    out = kernels.paged_prefill_attention(q, cache, tables, torch.tensor(starts, **i32), torch.tensor(q_lens, **i32),
                                          torch.tensor(kv_lens, **i32), max(q_lens))
    for r, (c, n) in enumerate(rows):
        k, v = gather(cache, tables[r], c + n)
        ref = ref_attention(q[starts[r]:starts[r] + n], k, v, torch.arange(c, c + n, device=DEV))
        torch.testing.assert_close(out[starts[r]:starts[r] + n].float(), ref, atol=2e-2, rtol=2e-2)
