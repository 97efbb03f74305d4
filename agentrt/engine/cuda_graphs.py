"""Decode steps captured in CUDA graphs at a few batch sizes (nano-vllm's approach).

A decode-only step at batch n replays the graph captured for the smallest batch size >= n:
the step's inputs are copied into static buffers (padding rows get slot -1, which the KV store
kernel skips, and context length 0, whose attention output is 0), the graph replays the model
forward on the Triton path, and the first n rows of the static output are the hidden states.
Logits and sampling stay outside the graph (they are per-step and cheap to launch).

    graphs = DecodeGraphs(model, kv_cache, block_size, max_batch=64, max_blocks=max_model_len // block_size)
    graphs.capture()                                   # once, after the weights and cache exist
    ...
    if graphs.can_run(input_ids, meta):
        hidden = graphs.run(input_ids, positions, meta)    # a view into a static buffer: use it before
    else:                                                  # the next replay
        hidden = model(input_ids, positions, kv_cache, meta)

All graphs share one memory pool, captured largest first. The KV cache tensor must stay the
same tensor for the graphs' lifetime (they hold its address).
"""
from __future__ import annotations

import torch
from torch import Tensor

from agentrt.engine.attention import AttentionMetadata, decode_kernel_inputs

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The captured sizes: nano-vllm-like steps up to max_batch, max_batch itself included."""
    sizes = [b for b in DEFAULT_BATCH_SIZES if b < max_batch]
    return sizes + [max_batch]


class DecodeGraphs:
    """CUDA graphs of `model`'s decode forward over `kv_cache` ([layers, 2, blocks, block_size,
    kv_heads, head_dim]) for batches up to `max_batch` and block tables up to `max_blocks` wide."""

    def __init__(self, model, kv_cache: Tensor, block_size: int, *, max_batch: int, max_blocks: int,
                 batch_sizes: list[int] | None = None):
        if kv_cache.device.type != "cuda":
            raise ValueError("CUDA graphs need the KV cache on a CUDA device")
        self.model, self.kv_cache, self.block_size = model, kv_cache, block_size
        self.batch_sizes = sorted(set(batch_sizes or graph_batch_sizes(max_batch)))
        self.max_batch, self.max_blocks = self.batch_sizes[-1], max_blocks
        dev = kv_cache.device
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.context_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=dev)
        self._no_mask = torch.empty(0, dtype=kv_cache.dtype, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.pool = None
        self.replays = 0

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:bs], bs, self.block_tables[:bs], self._no_mask, None, [], None,
                                 decode_context_lens=self.context_lens[:bs], decode_full_tables=self.block_tables[:bs])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every batch size (largest first, one shared pool). Warm-up runs before each
        capture compile the kernels; with slots -1 they write nothing into the cache."""
        from agentrt.engine.attention import use_triton

        if not use_triton(self.kv_cache):
            raise RuntimeError("CUDA graphs need the Triton attention path (the torch path syncs on masks)")
        self.slot_mapping.fill_(-1)
        self.context_lens.fill_(1)
        self.block_tables.zero_()
        torch.cuda.synchronize()
        for bs in reversed(self.batch_sizes):
            meta = self._meta(bs)
            self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, meta)     # warm-up
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, meta)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = (graph, out)
            torch.cuda.synchronize()
        self.context_lens.zero_()

    def graph_size(self, n: int) -> int | None:
        for bs in self.batch_sizes:
            if bs >= n:
                return bs
        return None

    def can_run(self, input_ids: Tensor, meta: AttentionMetadata) -> bool:
        """A decode-only step that fits a captured graph."""
        n = input_ids.shape[0]
        return (bool(self.graphs) and n == meta.num_decode and n <= self.max_batch and not meta.fresh
                and meta.context is None and meta.decode_shared is None
                and meta.decode_block_tables.shape[1] <= self.max_blocks)

    @torch.inference_mode()
    def run(self, input_ids: Tensor, positions: Tensor, meta: AttentionMetadata) -> Tensor:
        """Hidden states [n, hidden] of a decode-only step (check can_run first)."""
        n = input_ids.shape[0]
        bs = self.graph_size(n)
        graph, out = self.graphs[bs]
        tables, lens = decode_kernel_inputs(meta, self.block_size)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.context_lens[:n].copy_(lens, non_blocking=True)
        self.block_tables[:n, :tables.shape[1]].copy_(tables, non_blocking=True)
        if bs > n:                                   # padding rows: nothing stored, nothing read
            self.slot_mapping[n:bs].fill_(-1)
            self.context_lens[n:bs].zero_()
            self.input_ids[n:bs].zero_()
            self.positions[n:bs].zero_()
        graph.replay()
        self.replays += 1
        return out[:n]
