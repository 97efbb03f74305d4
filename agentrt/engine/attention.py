"""Paged attention on CPU (torch): store the step's K/V into blocks, gather by block table, SDPA.

Tokens of a step are packed: decode tokens (one query each) first, then prefill chunks. The
metadata is built once per step and shared by all layers. Three kinds of work:

  * decodes: one padded batch; GQA folds a KV group's query heads into the query axis, so K/V
    are never repeated. When the decodes share leading blocks (agents on one system prompt),
    cascade attention reads those blocks once for all of them and each sequence's own suffix
    separately, merging the two by their log-sum-exps;
  * fresh prefills (no earlier context): attend to the step's own K/V with `is_causal`;
  * chunks that extend earlier context (a prefix-cache hit, a later chunk of a long prompt): one
    padded batch with an explicit bottom-right causal mask, since `is_causal` is top-left aligned
    and wrong once a chunk's queries are fewer than its keys.

On CUDA the same metadata drives Triton kernels instead (`agentrt.engine.kernels`): the KV store
by slot mapping, paged decode attention with split-K straight through the block tables, and
prefill over paged context; fresh prefills take SDPA one by one when few, else all together
through the prefill kernel (their block tables read off the slot mapping). The kernels need per-row lengths
rather than masks: a runner may fill `decode_context_lens` and ContextPrefill's `query_start`,
`query_len`, `kv_len`; left empty, they are derived from the masks once per step (on the first
layer). `AGENTRT_ATTENTION` (or `set_attention_backend`) picks the path: `auto` (Triton on CUDA
when triton imports, torch otherwise), `torch`, or `triton` (also on CPU tensors, which needs
Triton's interpreter: `TRITON_INTERPRET=1` before the first import).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(slots=True)
class ContextPrefill:
    """Prefill chunks that attend to cached context, padded to one batch of `rows` x `max_len`."""
    block_tables: Tensor   # [rows, max_blocks]
    mask: Tensor           # [rows, 1, max_len, max_blocks * block_size] bool
    gather_index: Tensor   # [rows * max_len] packed token of each padded query (pads repeat a real one)
    valid_padded: Tensor   # [tokens] padded positions of the real queries ...
    valid_packed: Tensor   # [tokens] ... and their packed positions
    max_len: int
    # per-row lengths for the Triton kernel (optional; derived from the fields above when None)
    query_start: Tensor | None = None   # [rows] packed index of the chunk's first query
    query_len: Tensor | None = None     # [rows] queries in the chunk
    kv_len: Tensor | None = None        # [rows] keys it sees: cached context + the chunk itself


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: Tensor                 # [num_tokens] cache slot of every token of the step
    num_decode: int                      # packed tokens [0, num_decode) are decodes
    decode_block_tables: Tensor          # [num_decode, max_blocks] (after the shared blocks, if any)
    decode_mask: Tensor                  # [num_decode, 1, 1, max_blocks * block_size] additive, model dtype
    decode_shared: Tensor | None         # [shared_blocks] leading blocks common to every decode
    fresh: list[tuple[int, int]]         # (packed start, length) of prefills without earlier context
    context: ContextPrefill | None
    # for the Triton decode kernel (optional; derived from decode_mask / decode_shared when None):
    decode_context_lens: Tensor | None = None   # [num_decode] int32 keys each decode sees, its own included
    decode_full_tables: Tensor | None = None    # [num_decode, blocks] the whole table (shared blocks included)
    fresh_kernel: tuple | None = None           # fresh prefills as prefill-kernel rows (fresh_kernel_inputs)

    def to(self, device: torch.device) -> "AttentionMetadata":
        ctx = self.context
        if ctx is not None:
            ctx = ContextPrefill(*(getattr(ctx, f.name).to(device) if isinstance(getattr(ctx, f.name), Tensor)
                                   else getattr(ctx, f.name) for f in fields(ctx)))
        shared = None if self.decode_shared is None else self.decode_shared.to(device)
        opt = [None if t is None else t.to(device) for t in (self.decode_context_lens, self.decode_full_tables)]
        return AttentionMetadata(self.slot_mapping.to(device), self.num_decode, self.decode_block_tables.to(device),
                                 self.decode_mask.to(device), shared, self.fresh, ctx, *opt)


def store_kv(cache: Tensor, k: Tensor, v: Tensor, slot_mapping: Tensor) -> None:
    """cache: [2, num_blocks, block_size, kv_heads, head_dim]; k, v: [tokens, kv_heads, head_dim]."""
    flat = cache.view(2, -1, *cache.shape[3:])
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def gather_kv(cache: Tensor, block_table: Tensor) -> tuple[Tensor, Tensor]:
    """[rows, nb] block ids -> K, V as [rows, kv_heads, nb * block_size, head_dim]."""
    rows = block_table.shape[0]
    flat = block_table.reshape(-1)
    k = cache[0].index_select(0, flat).view(rows, -1, *cache.shape[3:])   # index_select: 3x faster than []
    v = cache[1].index_select(0, flat).view(rows, -1, *cache.shape[3:])
    return k.transpose(1, 2), v.transpose(1, 2)


_flash_with_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def cascade_decode(q: Tensor, k_own: Tensor, v_own: Tensor, cache: Tensor, meta: AttentionMetadata) -> Tensor:
    """q: [B, kvh, G, d]. Attention over shared blocks (once, all B*G queries together) plus each
    sequence's own blocks, combined exactly through the log-sum-exp of each part."""
    b, kvh, g, d = q.shape
    k_shared, v_shared = gather_kv(cache, meta.decode_shared.unsqueeze(0))     # [1, kvh, Ls, d]
    q_all = q.transpose(0, 1).reshape(1, kvh, b * g, d)
    o1, lse1 = _flash_with_lse(q_all, k_shared, v_shared)[:2]
    o1 = o1.view(kvh, b, g, d).transpose(0, 1)
    lse1 = lse1.view(kvh, b, g).transpose(0, 1)
    o2, lse2 = _flash_with_lse(q, k_own, v_own, attn_mask=meta.decode_mask)[:2]
    lse = torch.logaddexp(lse1, lse2)
    w1, w2 = (lse1 - lse).exp_().unsqueeze(-1), (lse2 - lse).exp_().unsqueeze(-1)
    return (o1 * w1 + o2 * w2).to(q.dtype)


def paged_attention(q: Tensor, k: Tensor, v: Tensor, cache: Tensor, meta: AttentionMetadata) -> Tensor:
    """q: [tokens, heads, d]; k, v: [tokens, kv_heads, d]. Returns [tokens, heads * d]."""
    if (cache.is_cuda or _BACKEND == "triton") and use_triton(cache):
        return paged_attention_triton(q, k, v, cache, meta)
    store_kv(cache, k, v, meta.slot_mapping)
    n_tok, n_heads, d = q.shape
    n_kv = k.shape[1]
    out = q.new_empty(n_tok, n_heads, d)
    nd = meta.num_decode
    if nd:
        kd, vd = gather_kv(cache, meta.decode_block_tables)                 # [B, kvh, L, d]
        qd = q[:nd].view(nd, n_kv, n_heads // n_kv, d)
        if meta.decode_shared is None:
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask)
        else:
            od = cascade_decode(qd, kd, vd, cache, meta)
        out[:nd] = od.reshape(nd, n_heads, d)
    for start, length in meta.fresh:
        sl = slice(start, start + length)
        qp, kp, vp = (t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out[sl] = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
    ctx = meta.context
    if ctx is not None:
        rows = ctx.block_tables.shape[0]
        qc = q.index_select(0, ctx.gather_index).view(rows, ctx.max_len, n_heads, d).transpose(1, 2)
        kc, vc = gather_kv(cache, ctx.block_tables)
        oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=ctx.mask, enable_gqa=True)
        out[ctx.valid_packed] = oc.transpose(1, 2).reshape(-1, n_heads, d)[ctx.valid_padded]
    return out.view(n_tok, n_heads * d)


# ------------------------------------------------------------------------------------------ GPU path
BACKENDS = ("auto", "torch", "triton")
_BACKEND = os.environ.get("AGENTRT_ATTENTION", "auto")
if _BACKEND not in BACKENDS:
    raise ValueError(f"AGENTRT_ATTENTION={_BACKEND!r}: expected one of {', '.join(BACKENDS)}")
_TRITON_OK: bool | None = None


def set_attention_backend(name: str) -> None:
    """auto (Triton on CUDA when triton imports), torch (SDPA everywhere), or triton (forced; on
    CPU tensors it needs TRITON_INTERPRET=1 before triton is first imported)."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: expected one of {', '.join(BACKENDS)}")
    _BACKEND = name


def attention_backend() -> str:
    return _BACKEND


def triton_available() -> bool:
    """Whether triton is installed (checked once, without importing it)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        _TRITON_OK = importlib.util.find_spec("triton") is not None
        if not _TRITON_OK and torch.cuda.is_available():
            warnings.warn("triton is not installed: CUDA attention falls back to torch SDPA "
                          "(pip install 'agentrt[gpu]')", stacklevel=3)
    return _TRITON_OK


def use_triton(cache: Tensor) -> bool:
    """Whether paged_attention takes the Triton kernels for this cache."""
    if _BACKEND == "torch":
        return False
    if _BACKEND == "triton":
        return True
    return cache.is_cuda and triton_available()


def decode_kernel_inputs(meta: AttentionMetadata, block_size: int) -> tuple[Tensor, Tensor]:
    """(block tables, context lengths) of the step's decodes for the Triton kernel: the runner's
    own fields when it filled them, else derived once from decode_mask (0 where a key is seen)
    and decode_shared (prepended blocks), and kept on `meta` for the other layers."""
    lens, tables = meta.decode_context_lens, meta.decode_full_tables
    shared = meta.decode_shared
    if tables is None:
        tables = meta.decode_block_tables
        if shared is not None and shared.numel():
            tables = torch.cat([shared.to(tables.dtype).unsqueeze(0).expand(tables.shape[0], -1), tables], 1)
        meta.decode_full_tables = tables
    if lens is None:
        lens = (meta.decode_mask.reshape(meta.num_decode, -1) == 0).sum(-1, dtype=torch.int32)
        if shared is not None and shared.numel():
            lens += shared.numel() * block_size
        meta.decode_context_lens = lens
    return tables, lens


def context_kernel_inputs(ctx: ContextPrefill) -> tuple[Tensor, Tensor, Tensor]:
    """(query_start, query_len, kv_len) of the context-prefill rows: the runner's own, else
    derived once from gather_index (pads repeat a row's last query) and the mask (the first
    query sees context + 1 keys)."""
    if ctx.query_start is None or ctx.query_len is None or ctx.kv_len is None:
        rows = ctx.block_tables.shape[0]
        gather = ctx.gather_index.view(rows, ctx.max_len)
        ctx.query_start = gather[:, 0].to(torch.int32)
        ctx.query_len = (gather[:, -1] - gather[:, 0] + 1).to(torch.int32)
        first = ctx.mask[:, 0, 0, :].sum(-1, dtype=torch.int32) - 1      # cached tokens before the chunk
        ctx.kv_len = first + ctx.query_len
    return ctx.query_start, ctx.query_len, ctx.kv_len


FRESH_KERNEL_MIN_ROWS = 4     # from this many fresh prefills in a step, one kernel launch beats one SDPA each


def fresh_kernel_inputs(meta: AttentionMetadata, block_size: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """(block tables, query starts, lengths, longest) of the step's fresh prefills, for the
    prefill kernel (as rows without context: kv_len = query_len). A fresh row's token j sits at
    position j, so its block j // block_size is slot_mapping[start + j] // block_size at every
    block's first token (entries past the row's end repeat its last block; never read)."""
    if meta.fresh_kernel is None:
        longest = max(n for _, n in meta.fresh)
        width = -(-longest // block_size)
        at = [[start + min(j * block_size, n - 1) for j in range(width)] for start, n in meta.fresh]
        dev = meta.slot_mapping.device
        tables = meta.slot_mapping[torch.tensor(at, device=dev)] // block_size
        starts = torch.tensor([s for s, _ in meta.fresh], dtype=torch.int32, device=dev)
        lens = torch.tensor([n for _, n in meta.fresh], dtype=torch.int32, device=dev)
        meta.fresh_kernel = (tables, starts, lens, longest)
    return meta.fresh_kernel


def paged_attention_triton(q: Tensor, k: Tensor, v: Tensor, cache: Tensor, meta: AttentionMetadata) -> Tensor:
    """The GPU path of paged_attention: same inputs, same output."""
    from agentrt.engine import kernels

    kernels.store_kv(cache, k, v, meta.slot_mapping)
    n_tok, n_heads, d = q.shape
    out = q.new_empty(n_tok, n_heads, d)
    nd = meta.num_decode
    if nd:
        tables, lens = decode_kernel_inputs(meta, cache.shape[2])
        kernels.paged_decode_attention(q[:nd], cache, tables, lens, out=out[:nd])
    if len(meta.fresh) >= FRESH_KERNEL_MIN_ROWS:
        tables, qs, ql, max_len = fresh_kernel_inputs(meta, cache.shape[2])
        kernels.paged_prefill_attention(q, cache, tables, qs, ql, ql, max_len, out=out)
    else:
        for start, length in meta.fresh:
            sl = slice(start, start + length)
            qp, kp, vp = (t[sl].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out[sl] = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)[0].transpose(0, 1)
    ctx = meta.context
    if ctx is not None:
        qs, ql, kl = context_kernel_inputs(ctx)
        kernels.paged_prefill_attention(q, cache, ctx.block_tables, qs, ql, kl, ctx.max_len, out=out)
    return out.view(n_tok, n_heads * d)
