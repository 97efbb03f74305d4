"""The torch runner: turns a scheduled batch into tensors, runs the model over the paged KV
cache, and samples. It implements `agentrt.engine.backend.Runner`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from agentrt.engine.attention import AttentionMetadata, ContextPrefill
from agentrt.engine.backend import StepOutput
from agentrt.engine.host_tier import Moves
from agentrt.engine.model import LlamaModel
from agentrt.engine.sampler import Sampler
from agentrt.engine.scheduler import ScheduledBatch

MIN_SHARED_BLOCKS = 4   # below this a cascade's extra kernels cost more than the gathers it saves


def block_runs(a: list[int], b: list[int]):
    """(a0, b0, n): maximal runs over which both index lists step by one."""
    i = 0
    while i < len(a):
        n = 1
        while i + n < len(a) and a[i + n] == a[i] + n and b[i + n] == b[i] + n:
            n += 1
        yield a[i], b[i], n
        i += n


# Tier copies go one copy per run of consecutive blocks, all runs in one call on CPU (one GIL
# release for the batch, so a prefetch thread does not stall the model's many small ops). A
# batched index_select/index_copy_ over the block axis measured ~6x slower on CPU (it gathers
# element by element). Host layout is slot-major, [slots, layers, 2, block_size, kv_heads,
# head_dim], so a host block is one contiguous piece (one DMA on CUDA).
def swap_out(device_kv: Tensor, host_kv: Tensor, block_ids: list[int], slots: list[int]) -> None:
    runs = list(block_runs(block_ids, slots))
    _copy([host_kv[s:s + n] for b, s, n in runs], [device_kv[:, :, b:b + n].movedim(2, 0) for b, s, n in runs])


def load(device_kv: Tensor, host_kv: Tensor, block_ids: list[int], slots: list[int], non_blocking: bool = False) -> None:
    runs = list(block_runs(block_ids, slots))
    _copy([device_kv[:, :, b:b + n] for b, s, n in runs], [host_kv[s:s + n].movedim(0, 2) for b, s, n in runs],
          non_blocking)


def _copy(dst: list[Tensor], src: list[Tensor], non_blocking: bool = False) -> None:
    if not dst:
        return
    if dst[0].device.type == src[0].device.type == "cpu":
        torch._foreach_copy_(dst, src)
        return
    for d, s in zip(dst, src):
        d.copy_(s, non_blocking=non_blocking)


def build_model(loaded, max_positions: int, dtype: torch.dtype, device: torch.device,
                weights: str = "dense") -> LlamaModel:
    """The engine's own Llama over `loaded`'s weights, cast to `dtype` (RoPE tables stay fp32);
    `weights="q4"`: the GGUF's quantized tensors in packed CPU kernels instead."""
    if weights == "q4":
        from agentrt.engine.gguf_weights import load_q4_model
        return load_q4_model(loaded, max_positions, dtype, device)
    model = LlamaModel(loaded.config, max_positions=max_positions)
    model.load_hf_state_dict(loaded.state_dict)
    cos, sin = model.rope_cos, model.rope_sin
    model = model.to(device=device, dtype=dtype).eval()
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    return model


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
                 host_slots: int = 0):
        cfg = model.config
        self.model = model
        self.block_size = block_size
        self.device = device
        n_kv = cfg.num_key_value_heads
        # one preallocated tensor for the whole device tier: [layers, K/V, blocks, block_size, kv_heads, head_dim]
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, num_blocks, block_size, n_kv, model.head_dim,
                                    dtype=dtype, device=device)
        # the host tier, slot-major; pinned on CUDA so copies are direct DMA
        self.host_kv = torch.zeros(host_slots, cfg.num_hidden_layers, 2, block_size, n_kv, model.head_dim, dtype=dtype,
                                   pin_memory=device.type == "cuda") if host_slots else None
        self.block_bytes = self.kv_cache[:, :, 0].nbytes      # one block's K and V over all layers
        self.sampler = Sampler()
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" and host_slots else None

    @classmethod
    def build(cls, loaded, *, num_blocks: int, block_size: int, max_positions: int, dtype: torch.dtype,
              device: torch.device, host_slots: int = 0, graph_batch: int = 0,
              weights: str = "dense") -> "ModelRunner":
        """The runner over `loaded`'s weights; on CUDA with `graph_batch` > 0, decode steps up to
        that batch replay CUDA graphs (captured on the first decode-only step)."""
        model = build_model(loaded, max_positions, dtype, device, weights)
        if device.type == "cuda" and graph_batch > 0:
            from agentrt.engine.cuda_graphs import GraphedDecodeModel
            model = GraphedDecodeModel(model, max_batch=graph_batch, max_blocks=-(-max_positions // block_size))
        return cls(model, num_blocks, block_size, dtype, device, host_slots)

    def forget(self, request_id: str) -> None:
        self.sampler.forget(request_id)

    @torch.inference_mode()
    def prefetch_copy(self, block_ids: Sequence[int], slots: Sequence[int]) -> None:
        """Host slots -> device blocks, from the prefetch thread (on CUDA on a side stream)."""
        if self._copy_stream is None:
            load(self.kv_cache, self.host_kv, list(block_ids), list(slots))
            return
        with torch.cuda.stream(self._copy_stream):
            load(self.kv_cache, self.host_kv, list(block_ids), list(slots), non_blocking=True)
        self._copy_stream.synchronize()

    @torch.inference_mode()
    def apply_moves(self, moves: Moves) -> None:
        """Run one step's tier copies: swap-outs first (their blocks may be load targets), then loads."""
        swap_out(self.kv_cache, self.host_kv, moves.out_blocks, moves.out_slots)
        load(self.kv_cache, self.host_kv, moves.in_blocks, moves.in_slots)

    # the disk tier's copies: one block's K and V over all layers, [layers, 2, block_size, kv_heads, head_dim]
    def read_block(self, block_id: int) -> Tensor:
        return self.kv_cache[:, :, block_id].to("cpu", copy=True)

    def read_host_slot(self, slot: int) -> Tensor:
        return self.host_kv[slot].clone()

    @torch.inference_mode()
    def write_blocks(self, payloads: dict[int, Tensor]) -> None:
        if payloads:
            _copy([self.kv_cache[:, :, b] for b in payloads], [p.to(self.device) for p in payloads.values()])

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        """Sampled token ids, their logits, and the indexes into batch.requests that sampled."""
        input_ids, positions, meta, sample_rows, logit_index = self.prepare(batch)
        hidden = self.model(input_ids, positions, self.kv_cache, meta)
        if not sample_rows:
            return StepOutput([], None, [])
        logits = self.model.logits(hidden[logit_index])
        reqs = [batch.requests[i] for i in sample_rows]
        tokens = self.sampler.sample(logits, [r.params for r in reqs], [r.request_id for r in reqs])
        return StepOutput(tokens.tolist(), logits, sample_rows)

    def prepare(self, batch: ScheduledBatch) -> tuple[Tensor, Tensor, AttentionMetadata, list[int], Tensor]:
        bs = self.block_size
        ids: list[int] = []
        pos_ranges: list[tuple[int, int]] = []
        tables: list[list[int]] = []
        sample_rows: list[int] = []
        logit_index: list[int] = []
        for row, (req, n) in enumerate(zip(batch.requests, batch.num_new_tokens)):
            start = req.num_computed_tokens
            ids.extend(req.tokens(start, start + n))
            pos_ranges.append((start, start + n))
            tables.append([b.block_id for b in req.block_table[: -(-(start + n) // bs)]])
            if start + n == req.num_tokens:
                sample_rows.append(row)
                logit_index.append(len(ids) - 1)
        positions = torch.cat([torch.arange(a, b) for a, b in pos_ranges])
        max_blocks = max(len(t) for t in tables)
        table_t = torch.tensor([t + [0] * (max_blocks - len(t)) for t in tables], dtype=torch.long)
        row_of_token = torch.repeat_interleave(torch.arange(len(tables)), torch.tensor([b - a for a, b in pos_ranges]))
        slots = table_t[row_of_token, positions // bs] * bs + positions % bs
        num_decode = sum(1 for n in batch.num_new_tokens if n == 1)
        fresh, context = self._prefill_meta(table_t[num_decode:], pos_ranges[num_decode:], num_decode)
        meta = AttentionMetadata(slots, num_decode, *self._decode_meta(table_t[:num_decode], pos_ranges[:num_decode]),
                                 fresh, context)
        dev = self.device
        return (torch.tensor(ids, dtype=torch.long, device=dev), positions.to(dev), meta if dev.type == "cpu" else meta.to(dev),
                sample_rows, torch.tensor(logit_index, dtype=torch.long, device=dev))

    def _decode_meta(self, tables: Tensor, ranges: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor | None]:
        bs = self.block_size
        if not ranges:
            return tables, torch.empty(0, dtype=self.kv_cache.dtype), None
        used = max(-(-b // bs) for _, b in ranges)
        context = torch.tensor([b for _, b in ranges])
        shared = self._shared_blocks(tables, ranges)
        shared_ids = tables[0, :shared].contiguous() if shared else None
        keys = torch.arange(shared * bs, used * bs)
        mask = torch.zeros(len(ranges), 1, 1, keys.numel(), dtype=self.kv_cache.dtype)
        mask.masked_fill_((keys >= context.unsqueeze(1))[:, None, None, :], float("-inf"))
        return tables[:, shared:used].contiguous(), mask, shared_ids

    def _shared_blocks(self, tables: Tensor, ranges: list[tuple[int, int]]) -> int:
        """Leading blocks common to every decode, when worth a cascade (CPU path only)."""
        if len(ranges) < 2 or self.device.type != "cpu":
            return 0
        own_last = min(-(-b // self.block_size) for _, b in ranges) - 1    # each one's last block is its own
        same = (tables[:, :own_last] == tables[0, :own_last]).all(dim=0)
        shared = int(same.int().cumprod(0).sum()) if own_last > 0 else 0
        return shared if shared >= MIN_SHARED_BLOCKS else 0

    def _prefill_meta(self, tables: Tensor, ranges: list[tuple[int, int]], offset: int
                      ) -> tuple[list[tuple[int, int]], ContextPrefill | None]:
        """Split prefill chunks into fresh ones and one padded batch of chunks with earlier context."""
        fresh, ctx_rows, starts = [], [], []
        for row, (a, b) in enumerate(ranges):
            (fresh if a == 0 else ctx_rows).append((offset, b - a) if a == 0 else row)
            starts.append(offset)
            offset += b - a
        if not ctx_rows:
            return fresh, None
        bs = self.block_size
        ctx_ranges = [ranges[r] for r in ctx_rows]
        max_len = max(b - a for a, b in ctx_ranges)
        max_blocks = max(-(-b // bs) for _, b in ctx_ranges)
        first = torch.tensor([a for a, _ in ctx_ranges]).view(-1, 1, 1)
        length = torch.tensor([b - a for a, b in ctx_ranges]).view(-1, 1)
        t = torch.arange(max_len)
        keys = torch.arange(max_blocks * bs)
        mask = keys.view(1, 1, -1) <= (first + t.view(1, -1, 1))          # bottom-right causal
        packed_start = torch.tensor([starts[r] for r in ctx_rows]).view(-1, 1)
        valid = t.view(1, -1) < length                                      # [rows, max_len]
        gather = packed_start + torch.minimum(t.view(1, -1), length - 1)    # pads repeat the last query
        padded_pos = torch.arange(len(ctx_rows) * max_len).view(-1, max_len)
        return fresh, ContextPrefill(tables[ctx_rows, :max_blocks].contiguous(), mask.unsqueeze(1),
                                     gather.reshape(-1), padded_pos[valid], (packed_start + t.view(1, -1))[valid], max_len)
