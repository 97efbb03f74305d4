"""GGUF block formats and the torch CPU weight-only linears they load into.

GGUF stores a [N, K] weight (N outputs, K inputs) row by row in blocks of 32 inputs:

- Q4_1: 20 bytes per block: d (fp16), m (fp16), 16 bytes of nibbles; weight = d·q + m with
  q in 0..15; byte j holds q[j] in its low nibble and q[j + 16] in its high one.
- Q8_0: 34 bytes per block: d (fp16), 32 int8; weight = d·q.

`Int4Linear` runs a Q4_1 weight through torch's `_weight_int4pack_mm_for_cpu` (group size 32),
whose weight is (q − 8)·scale + zero: with scale = d and zero = m + 8d that is d·q + m, exact
(up to the rounding of d and m to the activation dtype). The packed layout that
`_convert_weight_to_int4pack_for_cpu` makes depends on the CPU build path, so weights are packed
at load, never cached. `Int8Linear` runs a per-output-channel int8 weight through
`_weight_int8pack_mm` (Q8_0's per-block scales are folded into one scale per row: see
`requantize_rows`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP = 32
Q4_1_BYTES = 20
Q8_0_BYTES = 34


def _halves(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at byte `start` of every block, as float32: [rows, groups]."""
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0].astype(np.float32)


def unpack_q4_1(raw: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """raw [N, K/32·20] uint8 -> q [N, K] uint8 in 0..15, d and m [N, K/32] float32."""
    blocks = np.asarray(raw).reshape(raw.shape[0], -1, Q4_1_BYTES)
    d, m = _halves(blocks, 0), _halves(blocks, 2)
    qs = blocks[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(raw.shape[0], -1)
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(m)


def unpack_q8_0(raw: np.ndarray) -> tuple[Tensor, Tensor]:
    """raw [N, K/32·34] uint8 -> q [N, K] int8, d [N, K/32] float32."""
    blocks = np.asarray(raw).reshape(raw.shape[0], -1, Q8_0_BYTES)
    d = _halves(blocks, 0)
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(raw.shape[0], -1)
    return torch.from_numpy(q), torch.from_numpy(d)


def dequant_q4_1(q: Tensor, d: Tensor, m: Tensor) -> Tensor:
    n = q.shape[0]
    w = q.view(n, -1, GROUP).float() * d.unsqueeze(-1) + m.unsqueeze(-1)
    return w.view(n, -1)


def dequant_q8_0(q: Tensor, d: Tensor) -> Tensor:
    n = q.shape[0]
    return (q.view(n, -1, GROUP).float() * d.unsqueeze(-1)).view(n, -1)


def requantize_rows(q: Tensor, d: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Q8_0 (one scale per 32 inputs) -> int8 with one scale per row, for `_weight_int8pack_mm`.
    Each row's scale is its largest |weight| / 127, so the largest weights keep 8 bits; rows whose
    block scales differ lose precision in their small blocks (measured by the quality test).
    Done `chunk` rows at a time, so a large vocabulary never exists in float32 all at once."""
    out, scales = torch.empty_like(q), torch.empty(q.shape[0])
    for i in range(0, q.shape[0], chunk):
        w = dequant_q8_0(q[i:i + chunk], d[i:i + chunk])
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        out[i:i + chunk] = torch.round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
        scales[i:i + chunk] = scale
    return out, scales


DENSE_FROM_ROWS = 128
"""From this many rows of activations (a prefill chunk), Int4Linear dequantizes its weight to fp32
for the call and runs one sgemm: torch's int4 kernel unpacks the weight again for every few rows,
so its cost grows with the rows, while a dequantization is paid once per call."""


def pack_nibbles(q: Tensor) -> Tensor:
    """q [N, K] in 0..15 -> [N, K/32, 16] uint8: byte j of a group holds q[j] low, q[j + 16] high."""
    g = q.to(torch.uint8).view(q.shape[0], -1, 2, GROUP // 2)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).contiguous()


class Int4Linear(nn.Module):
    """y = x @ Wᵀ (+ b) with W a Q4_1 weight packed for torch's CPU int4 kernel (group 32).
    It also keeps the nibbles in a portable layout (half a byte per weight) to dequantize from
    for calls of `DENSE_FROM_ROWS` rows or more."""

    def __init__(self, q: Tensor, d: Tensor, m: Tensor, dtype: torch.dtype, bias: Tensor | None = None,
                 inner_k_tiles: int = 2):
        super().__init__()
        self.out_features, self.in_features = q.shape
        if self.in_features % GROUP:
            raise ValueError(f"in_features {self.in_features} is not a multiple of {GROUP}")
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).contiguous(), inner_k_tiles))
        # [K/32, N, 2]: (scale, zero) per group and output row, in the activation dtype
        self.register_buffer("scale_zeros", torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(dtype))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.register_buffer("nibbles", pack_nibbles(q))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] >= DENSE_FROM_ROWS:
            y = F.linear(x.float(), self.dense_weight()).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), self.packed, GROUP, self.scale_zeros)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> Tensor:
        """The fp32 weight the kernel computes with: (q − 8)·scale + zero, scale and zero as stored."""
        sz = self.scale_zeros.transpose(0, 1).float()                       # [N, K/32, 2]
        scale, zero = sz[..., :1], sz[..., 1:]
        q = torch.cat([self.nibbles & 0x0F, self.nibbles >> 4], dim=-1)     # [N, K/32, 32] uint8
        w = torch.empty(q.shape)
        torch.addcmul(zero - 8 * scale, q, scale, out=w)
        return w.view(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, q4 group {GROUP}"


class Int8Linear(nn.Module):
    """y = x @ Wᵀ with W int8 and one scale per output row (torch's `_weight_int8pack_mm`)."""

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_q", q.contiguous())
        self.register_buffer("scales", scale.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch._weight_int8pack_mm(x.contiguous(), self.weight_q, self.scales)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per row"


def linear_add(residual: Tensor, x: Tensor, layer: nn.Module) -> Tensor:
    """residual + x @ Wᵀ: fused into one addmm for a dense weight."""
    if isinstance(layer, nn.Linear):
        return torch.addmm(residual, x, layer.weight.t())
    return residual + layer(x)


def embed_rows(q: Tensor, d: Tensor, ids: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows of a Q8_0 embedding table, dequantized: only the rows asked for."""
    return dequant_q8_0(q[ids], d[ids]).to(dtype)


class Q8Embedding(nn.Module):
    """An embedding kept as Q8_0 (int8 + one scale per 32), dequantized per looked-up row."""

    def __init__(self, q: Tensor, d: Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight_q", q.contiguous())
        self.register_buffer("block_scales", d.contiguous())
        self.dtype = dtype

    def forward(self, ids: Tensor) -> Tensor:
        return embed_rows(self.weight_q, self.block_scales, ids, self.dtype)


def cpu_capability() -> str:
    """What torch's CPU kernels dispatch to here (AVX2, AVX512, DEFAULT, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def q4_supported() -> bool:
    """torch's CPU int4 weight-only kernels exist in this build."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_weight_int8pack_mm")


def q4_activation_dtype() -> torch.dtype:
    """Activation dtype for q4 on this CPU (see the README's measurements)."""
    return Q4_ACTIVATION.get(cpu_capability(), torch.float32)


Q4_ACTIVATION = {"AVX512": torch.bfloat16, "AVX2": torch.bfloat16}
