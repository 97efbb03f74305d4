"""Paged attention on CPU (torch): store the step's K/V into blocks, gather by block table, SDPA.

Tokens of a step are packed: decode tokens (one query each) first, then prefill chunks. The
metadata is built once per step and shared by all layers.

`is_causal` in SDPA is top-left aligned, which is wrong once a chunk's queries are fewer than its
keys (a cached prefix or an earlier chunk), so those chunks get an explicit bottom-right mask.
GQA in decode folds the query heads of a KV group into the query axis, so K/V are never repeated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(slots=True)
class PrefillChunk:
    start: int            # offset of the chunk's first token in the packed prefill tokens
    length: int           # tokens in the chunk
    fresh: bool           # no earlier tokens: attend to this step's K/V with is_causal
    block_table: Tensor   # [num_blocks] (when not fresh)
    mask: Tensor | None   # [length, context] bool (when not fresh)


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: Tensor          # [num_tokens] cache slot of every token of the step
    num_decode: int               # packed tokens [0, num_decode) are decodes
    decode_block_tables: Tensor   # [num_decode, max_blocks]
    decode_mask: Tensor           # [num_decode, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillChunk]

    def to(self, device: torch.device) -> "AttentionMetadata":
        chunks = [PrefillChunk(c.start, c.length, c.fresh, c.block_table.to(device),
                               None if c.mask is None else c.mask.to(device)) for c in self.prefills]
        return AttentionMetadata(self.slot_mapping.to(device), self.num_decode,
                                 self.decode_block_tables.to(device), self.decode_mask.to(device), chunks)


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


def paged_attention(q: Tensor, k: Tensor, v: Tensor, cache: Tensor, meta: AttentionMetadata) -> Tensor:
    """q: [tokens, heads, d]; k, v: [tokens, kv_heads, d]. Returns [tokens, heads * d]."""
    store_kv(cache, k, v, meta.slot_mapping)
    n_tok, n_heads, d = q.shape
    n_kv = k.shape[1]
    out = q.new_empty(n_tok, n_heads, d)
    nd = meta.num_decode
    if nd:
        kd, vd = gather_kv(cache, meta.decode_block_tables)                 # [B, kvh, L, d]
        qd = q[:nd].view(nd, n_kv, n_heads // n_kv, d)                       # group heads as queries
        out[:nd] = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask).view(nd, n_heads, d)
    for chunk in meta.prefills:
        lo, hi = nd + chunk.start, nd + chunk.start + chunk.length
        qp = q[lo:hi].transpose(0, 1).unsqueeze(0)                           # [1, heads, T, d]
        if chunk.fresh:
            kp, vp = k[lo:hi].transpose(0, 1).unsqueeze(0), v[lo:hi].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
        else:
            kp, vp = gather_kv(cache, chunk.block_table.unsqueeze(0))
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=chunk.mask, enable_gqa=True)
        out[lo:hi] = o[0].transpose(0, 1)
    return out.view(n_tok, n_heads * d)
