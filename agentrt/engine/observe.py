"""Observers: what the block pool and the scheduler did, published to whoever registered.

Subclass `EngineObserver` and override the calls you need; register it with
`LLMEngine.add_observer`. With none registered the pool and scheduler skip publishing entirely
(one truth test of an empty tuple), so the hot path pays nothing.

Calls come from the engine thread, in the order things happen:

| call                          | when                                                          |
|-------------------------------|---------------------------------------------------------------|
| `on_access(hashes, room)`     | full cached blocks read or written; `room`: blocks the cache  |
|                               | could hold at that moment (free plus cached)                   |
| `on_release(block_hash)`      | a holder let go of a cached block                              |
| `on_evict(block)`             | a cached leaf is evicted (its readers still set)               |
| `on_recompute(block_hash)`    | a block is computed again after an eviction                    |
| `on_swap_out(block, stored)`  | an evicted leaf was copied to the host tier (stored) or dropped|
| `on_load(n, prefetched)`      | n blocks came back from the host tier, on demand or ahead      |
| `on_step(batch, in_use)`      | a step was scheduled; `in_use`: device blocks held after it    |
| `on_computed(batch, seconds)` | the runner computed that batch in `seconds` (engine clock)     |
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EngineObserver:
    def on_access(self, hashes: Sequence[int], room: int) -> None:
        pass

    def on_release(self, block_hash: int) -> None:
        pass

    def on_evict(self, block: Any) -> None:
        pass

    def on_recompute(self, block_hash: int) -> None:
        pass

    def on_swap_out(self, block: Any, stored: bool) -> None:
        pass

    def on_load(self, n: int, prefetched: bool) -> None:
        pass

    def on_step(self, batch: Any, in_use: int) -> None:
        pass

    def on_computed(self, batch: Any, seconds: float) -> None:
        pass
