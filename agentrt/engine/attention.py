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
"""
from __future__ import annotations

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


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: Tensor                 # [num_tokens] cache slot of every token of the step
    num_decode: int                      # packed tokens [0, num_decode) are decodes
    decode_block_tables: Tensor          # [num_decode, max_blocks] (after the shared blocks, if any)
    decode_mask: Tensor                  # [num_decode, 1, 1, max_blocks * block_size] additive, model dtype
    decode_shared: Tensor | None         # [shared_blocks] leading blocks common to every decode
    fresh: list[tuple[int, int]]         # (packed start, length) of prefills without earlier context
    context: ContextPrefill | None

    def to(self, device: torch.device) -> "AttentionMetadata":
        ctx = self.context
        if ctx is not None:
            ctx = ContextPrefill(*(getattr(ctx, f.name).to(device) if isinstance(getattr(ctx, f.name), Tensor)
                                   else getattr(ctx, f.name) for f in fields(ctx)))
        shared = None if self.decode_shared is None else self.decode_shared.to(device)
        return AttentionMetadata(self.slot_mapping.to(device), self.num_decode, self.decode_block_tables.to(device),
                                 self.decode_mask.to(device), shared, self.fresh, ctx)


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
