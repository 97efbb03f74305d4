"""Sampling parameters, validated on construction."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingParams(BaseModel):
    """How to sample one request's output.

    >>> SamplingParams(temperature=0.0, max_tokens=32)           # greedy
    >>> SamplingParams(temperature=0.8, top_p=0.95, seed=7, stop=["\\n\\n"])
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(64, ge=1, description="most tokens to generate")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 means no top-k cut")
    seed: int | None = Field(None, ge=0, description="per-request seed for reproducible sampling")
    stop: list[str] = Field(default_factory=list, description="stop strings (not included in the text)")
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="keep going past end-of-sequence tokens")
    return_logits: bool = Field(False, description="attach each step's full logits (for parity checks)")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative_ids(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("stop_token_ids must be non-negative")
        return v

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
