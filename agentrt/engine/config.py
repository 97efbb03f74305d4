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
    seed: int = Field(0, description="seed for tiny-random-llama's weights")

    @model_validator(mode="after")
    def _host_holds_a_block(self) -> "EngineConfig":
        if 0 < self.host_kv_tokens < self.block_size:
            raise ValueError(f"host_kv_tokens={self.host_kv_tokens} holds no block of {self.block_size} tokens; "
                             "use 0 for no host tier")
        return self

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
