"""What a scheduling policy sets in the engine, installed in one call (`LLMEngine.install_policy`),
and what the engine tells a policy about its KV cache (`KVSpec`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agentrt.engine.blocks import Block
    from agentrt.engine.eviction import EvictionPolicy
    from agentrt.engine.observe import EngineObserver

Order = Literal["request", "program", "las"]
ORDERS: tuple[str, ...] = ("request", "program", "las")


@dataclass(frozen=True, slots=True)
class EnginePolicy:
    """Eviction ranking (None: LRU), which victims go to the host tier (None: every one that fits),
    and the queue / step-budget order: FCFS by request, FCFS by program arrival, or least
    attained service by program; `observer`: what the policy learns from the engine's steps (e.g.
    agentrt's step costs), registered with the policy and removed when another is installed."""
    eviction: "EvictionPolicy | None" = None
    swap_filter: "Callable[[Block], bool] | None" = None
    order: Order = "request"
    observer: "EngineObserver | None" = None

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; choose from {', '.join(ORDERS)}")


@dataclass(frozen=True, slots=True)
class KVSpec:
    """The device tier as a policy sizes its decisions: blocks, tokens a block, bytes a block."""
    num_blocks: int
    block_size: int
    block_bytes: int
    host_blocks: int = 0

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
