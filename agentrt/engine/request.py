"""A request's state as it moves through the scheduler, and what the engine returns for it."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from agentrt.engine.blocks import salt_root
from agentrt.engine.params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, frozen=True)
class RequestMeta:
    """Scheduling metadata a front attaches to a request: whose program and agent it serves (the
    blocks it reads remember them), at which step, and when its program arrived (program order).

    `cache_salt` (as vLLM's): the request reads and writes only prefix-cache blocks computed under
    the same salt, so tenants with different salts cannot see each other's prompts through cache
    hits or their timing. Salted blocks live on the device and host tiers, never on disk."""
    program_id: str | None = None
    agent_id: str | None = None
    step_id: str | None = None
    program_arrival: float | None = None
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        if self.cache_salt is not None and not isinstance(self.cache_salt, str):
            raise TypeError(f"cache_salt must be a string, not {type(self.cache_salt).__name__}")
        if self.cache_salt == "":
            raise ValueError("cache_salt must be a non-empty string (or None: no salt)")


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    meta: RequestMeta = field(default_factory=RequestMeta)
    arrival_time: float = 0.0                           # on the engine's clock, set when it is queued
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0          # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    block_table: list = field(default_factory=list)   # list[Block]
    block_hashes: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    logits: list = field(default_factory=list)        # per generated token, when params.return_logits
    text: str = ""                                     # detokenized output so far
    detok_offset: int = 0                              # tokens already turned into `text`
    cache_root: int | None = field(init=False, default=None)   # root of its block-hash chain (salt)

    def __post_init__(self) -> None:
        if self.meta.cache_salt is not None:
            self.cache_root = salt_root(self.meta.cache_salt)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def tokens(self, start: int, stop: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if stop <= n:
            return self.prompt_token_ids[start:stop]
        if start >= n:
            return self.output_token_ids[start - n:stop - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:stop - n]

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


class RequestOutput(NamedTuple):
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int
    metrics: dict[str, float]
    logits: list | None = None

    @classmethod
    def of(cls, req: Request) -> "RequestOutput":
        metrics = {"arrival_time": req.arrival_time, "num_preemptions": req.num_preemptions}
        if req.first_token_time is not None:
            metrics["ttft_s"] = req.first_token_time - req.arrival_time
        if req.finish_time is not None:
            metrics["latency_s"] = req.finish_time - req.arrival_time
        return cls(req.request_id, req.prompt_token_ids, list(req.output_token_ids), req.text,
                   req.finished, req.finish_reason, req.num_cached_tokens, metrics,
                   list(req.logits) if req.params.return_logits else None)
