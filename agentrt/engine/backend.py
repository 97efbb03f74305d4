"""The `Runner` protocol: what the engine needs from whatever computes a batch.

The torch runner (`agentrt.engine.runner.ModelRunner`) is one implementation; a simulated one
computes no tensors and only advances a clock. The engine owns scheduling, blocks and tiers; a
runner owns the KV tensors (device and host tier) and the copies between them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agentrt.engine.host_tier import Moves
    from agentrt.engine.scheduler import ScheduledBatch


class RunnerLayout(NamedTuple):
    """The KV layout the engine sized for its runner."""
    num_blocks: int
    block_size: int
    host_slots: int            # 0: no host tier
    max_model_len: int


class StepOutput(NamedTuple):
    """What one batch produced: a token per sampling row, their logits (None when the runner has
    none), and for each token the index of its request in `batch.requests`."""
    token_ids: list[int]
    logits: Any
    rows: list[int]


@runtime_checkable
class Runner(Protocol):
    block_bytes: int                       # one block's K and V over all layers

    def run(self, batch: "ScheduledBatch") -> StepOutput:
        """Compute the batch; requests whose last scheduled token ends their sequence sample one."""

    def apply_moves(self, moves: "Moves") -> None:
        """Run one step's tier copies (swap-outs first, then loads), before the step's compute."""

    def prefetch_copy(self, block_ids: Sequence[int], slots: Sequence[int]) -> None:
        """Copy host slots into device blocks; called from the prefetch thread beside a step (or
        inline, for a runner that sets `prefetch_inline = True`: the simulator's copies take no time)."""

    def forget(self, request_id: str) -> None:
        """Drop per-request state (a seeded sampler's generator) when the request ends."""
