"""Eviction policies for the prefix cache.

The block pool hands a policy only evictable leaves (cached, unreferenced, no cached children)
and asks it for a victim when it runs out of free blocks. Workflow-aware policies (agentrt.sched)
implement the same interface with other rankings.
"""
from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrt.engine.block_pool import Block


class EvictionPolicy(ABC):
    @abstractmethod
    def add(self, block: Block) -> None:
        """`block` became an evictable leaf."""

    @abstractmethod
    def remove(self, block: Block) -> None:
        """`block` is no longer evictable (reused by a hit, or it gained a cached child)."""

    @abstractmethod
    def pop(self) -> Block:
        """Choose, remove and return the victim."""

    @abstractmethod
    def blocks(self) -> Iterator[Block]:
        """The evictable blocks, in no particular order."""

    @abstractmethod
    def __len__(self) -> int: ...


class LRUPolicy(EvictionPolicy):
    """Least recently used leaf first (vLLM / SGLang prefix caching).

    A heap keyed by last access with lazy deletion: a parent that becomes a leaf when its child
    is evicted enters at its own (old) access time, which a tail-append queue would get wrong.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Block]] = []
        self._live: dict[int, int] = {}  # block_id -> generation of its live heap entry
        self._generation = 0

    def add(self, block: Block) -> None:
        self._generation += 1
        self._live[block.block_id] = self._generation
        heapq.heappush(self._heap, (block.last_access, self._generation, block.block_id, block))

    def remove(self, block: Block) -> None:
        del self._live[block.block_id]
        if len(self._heap) > 2 * len(self._live) + 64:  # drop stale entries now and then
            live = self._live
            self._heap = [e for e in self._heap if live.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def pop(self) -> Block:
        while self._heap:
            _, generation, block_id, block = heapq.heappop(self._heap)
            if self._live.get(block_id) == generation:
                del self._live[block_id]
                return block
        raise IndexError("no evictable block")

    def blocks(self) -> Iterator[Block]:
        live = self._live
        return (b for _, g, i, b in self._heap if live.get(i) == g)

    def __len__(self) -> int:
        return len(self._live)
