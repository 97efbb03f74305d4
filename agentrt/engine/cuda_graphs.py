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

Or wrap the model, and whatever runs it (ModelRunner) replays graphs for decode-only steps:

    model = GraphedDecodeModel(model, max_batch=max_num_seqs, max_blocks=-(-max_model_len // block_size))
    runner = ModelRunner(model, num_blocks, block_size, dtype, device, host_slots)
    # captured on the first CUDA forward (or call model.capture(runner.kv_cache) up front)

All graphs share one memory pool, captured largest first. The KV cache tensor must stay the
same tensor for the graphs' lifetime (they hold its address).

`eager=True` captures nothing: `run` pads the batch into the same static buffers and runs the
model on them directly. That is the graphs' exact input path without CUDA, so the padding
semantics are tested on CPU (Triton's interpreter) and a suspect graph can be compared with it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

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
                 batch_sizes: list[int] | None = None, eager: bool = False):
        if kv_cache.device.type != "cuda" and not eager:
            raise ValueError("CUDA graphs need the KV cache on a CUDA device (eager=True runs the padded path)")
        self.eager = eager
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
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph | None, Tensor | None]] = {}
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
        if self.eager:
            self.graphs = {bs: (None, None) for bs in self.batch_sizes}
            return
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
        if graph is None:                             # eager: the same padded inputs, run directly
            out = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, self._meta(bs))
        else:
            graph.replay()
        self.replays += 1
        return out[:n]


class GraphedDecodeModel(nn.Module):
    """A LlamaModel whose decode-only forwards replay CUDA graphs; every other forward (prefill,
    mixed steps, batches or tables over the captured bounds, CPU, the torch attention path) runs
    the model itself. Same interface as the model: config, head_dim, forward, logits."""

    def __init__(self, model, *, max_batch: int, max_blocks: int, batch_sizes: list[int] | None = None,
                 eager: bool = False):
        super().__init__()
        self.inner = model
        self.eager = eager                 # DecodeGraphs(eager=True): the padded path without CUDA
        self.config = model.config
        self.max_batch, self.max_blocks, self.batch_sizes = max_batch, max_blocks, batch_sizes
        self.graphs: DecodeGraphs | None = None

    @property
    def head_dim(self) -> int:
        return self.inner.head_dim

    def logits(self, hidden: Tensor) -> Tensor:
        return self.inner.logits(hidden)

    def capture(self, kv_cache: Tensor) -> DecodeGraphs:
        """Capture the graphs over this cache ([layers, 2, blocks, block_size, kv_heads, head_dim])."""
        graphs = DecodeGraphs(self.inner, kv_cache, kv_cache.shape[3], max_batch=self.max_batch,
                              max_blocks=self.max_blocks, batch_sizes=self.batch_sizes, eager=self.eager)
        graphs.capture()
        self.graphs = graphs
        return graphs

    def forward(self, input_ids: Tensor, positions: Tensor, kv_cache: Tensor, meta: AttentionMetadata) -> Tensor:
        from agentrt.engine.attention import use_triton

        graphs = self.graphs
        if (graphs is None and (kv_cache.is_cuda or self.eager) and use_triton(kv_cache)
                and meta.num_decode == input_ids.shape[0]):
            graphs = self.capture(kv_cache)
        if graphs is not None and graphs.kv_cache is kv_cache and graphs.can_run(input_ids, meta):
            return graphs.run(input_ids, positions, meta)
        return self.inner(input_ids, positions, kv_cache, meta)
