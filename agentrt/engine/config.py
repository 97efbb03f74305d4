"""Engine configuration, validated."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on CUDA")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block")
    kv_cache_tokens: int = Field(16384, ge=16, description="device-tier KV capacity in tokens")
    max_num_seqs: int = Field(64, ge=1, description="most requests in one batch")
    max_num_batched_tokens: int = Field(2048, ge=16, description="token budget per step (prefill chunk size)")
    max_model_len: int | None = Field(None, ge=2, description="context limit; default: the model's, capped by the KV capacity")
    enable_prefix_caching: bool = True
    schedule_order: Literal["request", "program"] = Field(
        "request", description="waiting queue: FCFS by request, or by program arrival (the runtime's hint)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    seed: int = Field(0, description="seed for tiny-random-llama's weights")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but CUDA is not available")
        return torch.device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)
