"""Triton kernels over the engine's paged KV cache.

Cache layout (one layer): `cache[2, num_blocks, block_size, kv_heads, head_dim]`, K at index 0
and V at index 1 (`ModelRunner.kv_cache[layer]`). The last dimension must be contiguous; every
other stride is passed, so a layer's view of the full `[layers, 2, ...]` tensor works as it is.

* `store_kv`: write a step's K/V into cache slots by slot mapping (`slot < 0` is skipped, which
  is what a CUDA-graph-padded batch uses for its padding rows).
* `paged_decode_attention`: one query token per sequence. Grid (sequence, KV head, split): the
  query heads of one KV head (a GQA group, padded to the 16-row tensor-core tile when small)
  run together against that KV head's keys, read through the block table. With several splits
  each program covers one range of the context and writes a partial output plus its
  log-sum-exp (base 2), and a second kernel merges the splits; with one split the first pass
  writes the normalised output directly.
* `paged_prefill_attention`: query chunks over paged context (a prefix-cache hit, a later
  chunk of a long prompt). Grid (query tile, row, KV head): a tile of the chunk's queries with
  every head of the GQA group attends to the row's cached keys and its own, bottom-right
  causal (query t of a chunk at position `kv_len - q_len + t` sees keys `0 ..= that`).

Keys are gathered per position inside a tile (`block_table[pos // block_size]`), so a tile may
span several cache blocks and the tile width is independent of the block size. Scores and the
softmax are fp32; K/V and P@V go through `tl.dot` in the cache dtype (fp32 caches use IEEE fp32,
not TF32, so a float32 engine stays exact enough for its parity tests).

Run on CPU tensors by Triton's interpreter (`TRITON_INTERPRET=1` set before this module is
imported); no autotuning, no inline asm, so the same code runs there and on CUDA.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634
MAX_SPLITS = 64


# ------------------------------------------------------------------------------------------ kernels
@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cv, stride_cb, stride_ct, stride_ch,
                     BLOCK_SIZE: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     H_PAD: tl.constexpr, D_PAD: tl.constexpr):
    t = tl.program_id(0)
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    slot = tl.zeros([H_PAD, D_PAD], tl.int64) + tl.load(slot_ptr + t).to(tl.int64)   # as a block: the
    mask = (h < KV_HEADS) & (d < HEAD_DIM) & (slot >= 0)                              # interpreter wants block masks
    slot = tl.maximum(slot, 0)
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    kk = tl.load(k_ptr + t.to(tl.int64) * stride_kt + h * stride_kh + d, mask=mask)
    vv = tl.load(v_ptr + t.to(tl.int64) * stride_vt + h * stride_vh + d, mask=mask)
    dst = cache_ptr + blk * stride_cb + off * stride_ct + h * stride_ch + d
    tl.store(dst, kk.to(cache_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + stride_cv, vv.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _decode_split_kernel(q_ptr, cache_ptr, tables_ptr, lens_ptr, out_ptr, part_o_ptr, part_lse_ptr,
                         stride_qb, stride_qh, stride_ob, stride_oh,
                         stride_cv, stride_cb, stride_ct, stride_ch, stride_tb,
                         stride_pb, stride_ph, stride_ps, stride_lb, stride_lh,
                         scale_log2,
                         GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, TILES_PER_SPLIT: tl.constexpr,
                         DIRECT: tl.constexpr, IEEE: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(lens_ptr + b)
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    n = tl.arange(0, TILE_N)
    head = kvh * GROUP + g
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + head[:, None] * stride_qh + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    start = split * (TILES_PER_SPLIT * TILE_N)
    n_tiles = tl.minimum(tl.cdiv(tl.maximum(ctx - start, 0), TILE_N), TILES_PER_SPLIT)  # 0: past the context
    table = tables_ptr + b.to(tl.int64) * stride_tb
    for i in range(0, n_tiles):
        pos = start + i * TILE_N + n
        valid = pos < ctx
        blk = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        base = cache_ptr + blk * stride_cb + (pos % BLOCK_SIZE) * stride_ct + kvh * stride_ch     # [TILE_N]
        kt = tl.load(base[None, :] + d[:, None], mask=dmask[:, None] & valid[None, :], other=0.0)  # [D_PAD, TILE_N]
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))          # finite: every tile has a valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(base[:, None] + stride_cv + d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
        if IEEE:
            pv = tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            pv = tl.dot(p.to(vt.dtype), vt)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    omask = gmask[:, None] & dmask[None, :]
    if DIRECT:
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(part_o_ptr + b.to(tl.int64) * stride_pb + head[:, None] * stride_ph + split * stride_ps + d[None, :],
                 o, mask=omask)
        tl.store(part_lse_ptr + b.to(tl.int64) * stride_lb + head * stride_lh + split, lse, mask=gmask)


@triton.jit
def _decode_merge_kernel(part_o_ptr, part_lse_ptr, out_ptr,
                         stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
                         NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    smask = s < NUM_SPLITS
    dmask = d < HEAD_DIM
    lse = tl.load(part_lse_ptr + b.to(tl.int64) * stride_lb + h * stride_lh + s, mask=smask, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)          # no keys at all (a padding row): output 0
    w = tl.exp2(lse - m)
    o = tl.load(part_o_ptr + b.to(tl.int64) * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :],
                mask=smask[:, None] & dmask[None, :], other=0.0)
    total = tl.sum(w, 0)
    res = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + d, res.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _prefill_kernel(q_ptr, out_ptr, cache_ptr, tables_ptr, qstart_ptr, qlen_ptr, kvlen_ptr,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_cv, stride_cb, stride_ct, stride_ch, stride_tb,
                    scale_log2,
                    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, TILE_T: tl.constexpr, TILE_N: tl.constexpr, M: tl.constexpr,
                    IEEE: tl.constexpr):
    tile = tl.program_id(0)
    r = tl.program_id(1)
    kvh = tl.program_id(2)
    q_len = tl.load(qlen_ptr + r)
    q_start = tl.load(qstart_ptr + r).to(tl.int64)
    kv_len = tl.load(kvlen_ptr + r)
    ctx0 = kv_len - q_len                               # cached tokens before the chunk
    t0 = tile * TILE_T
    mi = tl.arange(0, M)
    t = t0 + mi // G_PAD                                 # query token of each row ...
    g = mi % G_PAD                                       # ... and its head in the group
    d = tl.arange(0, D_PAD)
    n = tl.arange(0, TILE_N)
    dmask = d < HEAD_DIM
    rmask = (t < q_len) & (g < GROUP)
    head = kvh * GROUP + g
    q = tl.load(q_ptr + (q_start + t)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    qpos = ctx0 + t                                      # absolute position of each row's query
    m_i = tl.full([M], float("-inf"), tl.float32)
    l_i = tl.zeros([M], tl.float32)
    acc = tl.zeros([M, D_PAD], tl.float32)
    k_end = tl.minimum(kv_len, ctx0 + t0 + TILE_T)       # keys the tile's last query may see
    n_tiles = tl.where(t0 < q_len, tl.cdiv(k_end, TILE_N), 0)
    table = tables_ptr + r.to(tl.int64) * stride_tb
    for j in range(0, n_tiles):
        pos = j * TILE_N + n
        valid = pos < kv_len
        blk = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        base = cache_ptr + blk * stride_cb + (pos % BLOCK_SIZE) * stride_ct + kvh * stride_ch
        kt = tl.load(base[None, :] + d[:, None], mask=dmask[:, None] & valid[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        seen = valid[None, :] & (pos[None, :] <= qpos[:, None])
        s = tl.where(seen, s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))          # finite: key 0 is seen by every row in tile 0
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(base[:, None] + stride_cv + d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
        if IEEE:
            pv = tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            pv = tl.dot(p.to(vt.dtype), vt)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + (q_start + t)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


# ------------------------------------------------------------------------------------------ launchers
def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _check_cache(cache: Tensor) -> None:
    if cache.dim() != 5 or cache.shape[0] != 2:
        raise ValueError(f"cache must be [2, num_blocks, block_size, kv_heads, head_dim], got {tuple(cache.shape)}")
    if cache.stride(-1) != 1:
        raise ValueError("cache's head_dim axis must be contiguous")


def _last_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def store_kv(cache: Tensor, k: Tensor, v: Tensor, slot_mapping: Tensor) -> None:
    """cache: [2, num_blocks, block_size, kv_heads, head_dim]; k, v: [tokens, kv_heads, head_dim];
    slot_mapping: [tokens] (block * block_size + offset; < 0: not stored)."""
    _check_cache(cache)
    n = k.shape[0]
    if n == 0:
        return
    k, v = _last_contiguous(k), _last_contiguous(v)
    _, _, bs, kvh, d = cache.shape
    _store_kv_kernel[(n,)](k, v, cache, slot_mapping,
                           k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3),
                           BLOCK_SIZE=bs, KV_HEADS=kvh, HEAD_DIM=d, H_PAD=_pow2(kvh), D_PAD=_pow2(d))


def decode_splits(batch: int, kv_heads: int, max_keys: int, tile_n: int, device: torch.device) -> int:
    """Splits of the context for a decode batch, from shapes only (so a captured graph keeps
    them): enough programs to fill the GPU twice over, each split at least two tiles."""
    tiles = max(1, -(-max_keys // tile_n))
    want = max(1, -(-2 * _sm_count(device) // max(1, batch * kv_heads)))
    return max(1, min(want, -(-tiles // 2), MAX_SPLITS))


def default_tile_n(block_size: int, device: torch.device) -> int:
    return 64 if device.type == "cuda" else max(16, min(32, block_size))


def paged_decode_attention(q: Tensor, cache: Tensor, block_tables: Tensor, context_lens: Tensor, *,
                           out: Tensor | None = None, scale: float | None = None, num_splits: int | None = None,
                           tile_n: int | None = None) -> Tensor:
    """q: [batch, heads, head_dim], one query per sequence; block_tables: [batch, max_blocks] (int32
    or int64); context_lens: [batch] keys each query sees (its own token included; 0: output 0).
    Returns out [batch, heads, head_dim] in q's dtype."""
    _check_cache(cache)
    q = _last_contiguous(q)
    b, h, d = q.shape
    _, _, bs, kvh, dc = cache.shape
    if dc != d or h % kvh:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(cache.shape)}")
    group = h // kvh
    if out is None:
        out = torch.empty_like(q)
    if b == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    tile_n = tile_n or default_tile_n(bs, q.device)
    max_keys = block_tables.shape[1] * bs
    tiles = max(1, -(-max_keys // tile_n))
    splits = num_splits or decode_splits(b, kvh, max_keys, tile_n, q.device)
    splits = max(1, min(splits, tiles))
    per_split = -(-tiles // splits)
    splits = -(-tiles // per_split)
    g_pad, d_pad = max(16, _pow2(group)), max(16, _pow2(d))
    ieee = cache.dtype == torch.float32
    direct = splits == 1
    if direct:
        part_o = part_lse = out                    # unused
        sp = (0, 0, 0, 0, 0)
    else:
        part_o = torch.empty(b, h, splits, d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(b, h, splits, dtype=torch.float32, device=q.device)
        sp = (part_o.stride(0), part_o.stride(1), part_o.stride(2), part_lse.stride(0), part_lse.stride(1))
    _decode_split_kernel[(b, kvh, splits)](
        q, cache, block_tables, context_lens, out, part_o, part_lse,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3), block_tables.stride(0),
        *sp, scale * LOG2E,
        GROUP=group, G_PAD=g_pad, HEAD_DIM=d, D_PAD=d_pad, BLOCK_SIZE=bs, TILE_N=tile_n,
        TILES_PER_SPLIT=per_split, DIRECT=direct, IEEE=ieee, num_warps=4)
    if not direct:
        _decode_merge_kernel[(b, h)](part_o, part_lse, out, *sp, out.stride(0), out.stride(1),
                                     NUM_SPLITS=splits, S_PAD=_pow2(splits), HEAD_DIM=d, D_PAD=_pow2(d),
                                     num_warps=1 if q.device.type == "cuda" else 4)
    return out


def paged_prefill_attention(q: Tensor, cache: Tensor, block_tables: Tensor, query_start: Tensor, query_len: Tensor,
                            kv_len: Tensor, max_query_len: int, *, out: Tensor | None = None,
                            scale: float | None = None, tile_t: int | None = None, tile_n: int | None = None) -> Tensor:
    """Chunks over paged context. q: [tokens, heads, head_dim] packed; row r's queries are
    q[query_start[r] : query_start[r] + query_len[r]] and its keys are the first kv_len[r] tokens
    of its block table (the chunk's own K/V already stored), so query t sits at position
    kv_len[r] - query_len[r] + t. Writes those rows of `out` ([tokens, heads, head_dim]) only."""
    _check_cache(cache)
    q = _last_contiguous(q)
    _, h, d = q.shape
    _, _, bs, kvh, _ = cache.shape
    group = h // kvh
    if out is None:
        out = torch.empty_like(q)
    rows = block_tables.shape[0]
    if rows == 0 or max_query_len == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    g_pad = _pow2(group)
    cuda = q.device.type == "cuda"
    if tile_t is None:
        tile_t = max(1, (64 if cuda else 16) // g_pad)
    tile_t = _pow2(max(tile_t, -(-16 // g_pad)))         # tl.dot needs >= 16 rows; tl.arange a power of 2
    tile_n = tile_n or (64 if cuda else max(16, min(32, bs)))
    grid = (-(-max_query_len // tile_t), rows, kvh)
    _prefill_kernel[grid](
        q, out, cache, block_tables, query_start, query_len, kv_len,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3), block_tables.stride(0),
        scale * LOG2E,
        GROUP=group, G_PAD=g_pad, HEAD_DIM=d, D_PAD=max(16, _pow2(d)), BLOCK_SIZE=bs, TILE_T=tile_t,
        TILE_N=tile_n, M=tile_t * g_pad, IEEE=cache.dtype == torch.float32, num_warps=4)
    return out
