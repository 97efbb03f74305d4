"""Engine configuration, validated."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on CUDA")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block")
    kv_cache_tokens: int = Field(16384, ge=16, description="device-tier KV capacity in tokens")
    host_kv_tokens: int = Field(0, ge=0, description="host-tier KV capacity in tokens (0: no host tier); evicted "
                                "cached blocks are swapped out there and loaded back on a prefix hit "
                                "(needs prefix caching)")
    max_num_seqs: int = Field(64, ge=1, description="most requests in one batch")
    max_num_batched_tokens: int = Field(2048, ge=16, description="token budget per step (prefill chunk size)")
    max_model_len: int | None = Field(None, ge=2, description="context limit; default: the model's, capped by the KV capacity")
    enable_prefix_caching: bool = True
    schedule_order: Literal["request", "program", "las"] = Field(
        "request", description="queue and step-budget order: FCFS by request, by program arrival, or least "
                               "attained service by program (the runtime's hints)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    cuda_graphs: bool = Field(True, description="on CUDA, replay decode steps from CUDA graphs captured at a few "
                                                "batch sizes (no effect on CPU)")
    seed: int = Field(0, description="seed for tiny-random-llama's weights")
    weights: Literal["auto", "q4", "bf16", "fp32"] = Field(
        "auto", description="q4: the GGUF's 4-bit linears through torch's CPU int4 kernels (int8 head); bf16, fp32: "
                            "dense dequantized weights; auto: q4 on CPU for a GGUF model when dtype is auto, else "
                            "dense at the dtype")
    kv_disk_dir: str | None = Field(None, description="a disk KV tier shared across runs and processes in this "
                                                      "directory ('auto': under the user cache dir); needs prefix caching")
    kv_disk_bytes: int = Field(2 * 1024**3, ge=0, description="size cap of the disk tier (least recently used first)")
    kv_disk_write: Literal["all", "evicted"] = Field(
        "all", description="all: every full block once, when first computed (what a process computed is there for "
                           "the next); evicted: only blocks leaving memory (the host tier, or the device without one)")

    @model_validator(mode="after")
    def _host_holds_a_block(self) -> "EngineConfig":
        if 0 < self.host_kv_tokens < self.block_size:
            raise ValueError(f"host_kv_tokens={self.host_kv_tokens} holds no block of {self.block_size} tokens; "
                             "use 0 for no host tier")
        if self.weights in _DENSE and self.dtype not in ("auto", _DENSE[self.weights]):
            raise ValueError(f"weights={self.weights!r} runs at {_DENSE[self.weights]}, not dtype={self.dtype!r}")
        return self

    def weight_format(self, device: torch.device, from_gguf: bool) -> str:
        """The weight format this config resolves to: q4, bf16, fp32 (or float16 for dense fp16)."""
        if self.weights != "auto":
            return self.weights
        if from_gguf and device.type == "cpu" and self.dtype == "auto":
            from agentrt.engine.quant import q4_supported
            if q4_supported():
                return "q4"
        return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.torch_dtype(device), "float16")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but CUDA is not available")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device, weights: str | None = None) -> torch.dtype:
        """Activation and KV dtype; `weights` (a resolved format) picks it when dtype is auto."""
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        fmt = weights or self.weights
        if fmt in _DENSE:
            return getattr(torch, _DENSE[fmt])
        if fmt == "q4":
            from agentrt.engine.quant import q4_activation_dtype
            return q4_activation_dtype()
        return torch.bfloat16 if device.type == "cuda" else torch.float32


_DENSE = {"bf16": "bfloat16", "fp32": "float32"}
