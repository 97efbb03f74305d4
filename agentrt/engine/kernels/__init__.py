"""Triton kernels for the engine's GPU path: paged decode attention with split-K, the KV store,
and prefill over paged context (see `paged_attention`).

Importing this package imports triton: do it only where the kernels will run (CUDA tensors, or
CPU tensors under Triton's interpreter, `TRITON_INTERPRET=1`, which must be set before the
first import). `agentrt.engine.attention` imports it lazily, on the first CUDA step.
"""
from __future__ import annotations

from agentrt.engine.kernels.paged_attention import (
    decode_splits,
    paged_decode_attention,
    paged_prefill_attention,
    store_kv,
)

__all__ = ["decode_splits", "paged_decode_attention", "paged_prefill_attention", "store_kv"]
