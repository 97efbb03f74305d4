"""`RankedPolicy`: eviction by a rank computed from a block's readers, at a cost that grows with
the number of distinct reader sets (about one per program and agent), not with the blocks.

Evictable leaves are kept in buckets by the set of (program, agent) keys that read them; every
leaf of a bucket has the same rank, so a bucket is a heap by (last access, when it became a
leaf) and only its head competes. `pop` ranks the buckets once into a heap that serves the
evictions of the next `REFRESH_SECONDS` (one `allocate(k)` of a step) as long as the program
table has not changed. The victim is the leaf with the smallest (rank, last access, added):
exactly what ranking every leaf would choose, at a fraction of the work once there are tens of
thousands of blocks.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

from agentrt.clock import MONOTONIC, Clock
from agentrt.engine.block_pool import Block
from agentrt.engine.eviction import EvictionPolicy
from agentrt.sched.program_table import ProgramTable


class RankedPolicy(EvictionPolicy):
    REFRESH_SECONDS = 0.005

    def __init__(self, table: ProgramTable, clock: Clock = MONOTONIC):
        self.table, self.clock = table, clock
        self._where: dict[int, tuple[tuple, int, Block]] = {}   # block id -> (bucket key, added, block)
        self._buckets: dict[tuple, list[tuple]] = {}        # key -> heap of (last access, added, block id)
        self._added = 0
        self._heap: list[tuple] = []                        # (rank, last access, added, key) per bucket head
        self._built_at = self._valid_until = -math.inf
        self._built_version = -1
        self._memo: dict = {}
        self._rank_of: dict[tuple, object] = {}             # bucket key -> rank, as of the build

    # ------------------------------------------------------------------ EvictionPolicy
    def add(self, block: Block) -> None:
        self._added += 1
        key = tuple(sorted(block.readers))
        self._where[block.block_id] = (key, self._added, block)
        entry = (block.last_access, self._added, block.block_id)
        heapq.heappush(self._buckets.setdefault(key, []), entry)
        if self._fresh(self.clock.now()):            # it may be its bucket's new head
            heapq.heappush(self._heap, (self._rank(key), *entry[:2], key))

    def remove(self, block: Block) -> None:
        del self._where[block.block_id]              # its bucket entry goes stale, skipped later

    def blocks(self) -> Iterator[Block]:
        return iter([block for _, _, block in self._where.values()])

    def __len__(self) -> int:
        return len(self._where)

    def pop(self) -> Block:
        if not self._where:
            raise IndexError("no evictable block")
        if not self._fresh(self.clock.now()):
            self._rebuild()
        while self._heap:
            rank, access, added, key = heapq.heappop(self._heap)
            head = self._head(key)
            if head is None:
                continue
            if head[:2] != (access, added):          # stale: the bucket's head moved on
                heapq.heappush(self._heap, (rank, *head[:2], key))
                continue
            heapq.heappop(self._buckets[key])
            block = self._where.pop(head[2])[2]
            nxt = self._head(key)
            if nxt is not None:
                heapq.heappush(self._heap, (rank, *nxt[:2], key))
            return block
        self._valid_until = -math.inf                # nothing valid was left: rank afresh
        return self.pop()

    # ------------------------------------------------------------------ ranking
    def rank(self, readers: tuple, now: float, memo: dict):
        """Smaller is evicted first (a float, or a tuple of floats); `readers`: sorted
        (program, agent) keys."""
        raise NotImplementedError

    def expiry(self, now: float) -> float:
        """When ranks computed at `now` stop holding by themselves (beyond the refresh window)."""
        return math.inf

    def _fresh(self, now: float) -> bool:
        """The ranks still hold: built moments ago, no program has moved since, and no rank
        has expired (a pin's TTL)."""
        return now < self._valid_until and self._built_version == self.table.version

    def _rank(self, key: tuple):
        if key not in self._rank_of:
            self._rank_of[key] = self.rank(key, self._built_at, self._memo)
        return self._rank_of[key]

    def _rebuild(self) -> None:
        now = self.clock.now()
        self._built_at, self._built_version, self._memo, self._rank_of = now, self.table.version, {}, {}
        self._valid_until = min(now + self.REFRESH_SECONDS, self.expiry(now))
        heap = []
        for key in list(self._buckets):
            head = self._head(key)
            if head is not None:
                heap.append((self._rank(key), *head[:2], key))
        heapq.heapify(heap)
        self._heap = heap

    def _head(self, key: tuple) -> tuple | None:
        """The bucket's live head (stale entries dropped; an empty bucket goes)."""
        bucket = self._buckets.get(key)
        while bucket:
            access, added, block_id = bucket[0]
            live = self._where.get(block_id)
            if live is not None and live[1] == added:
                block = live[2]
                if block.last_access == access and len(block.readers) == len(key) and \
                        all(r in block.readers for r in key):
                    return bucket[0]
                heapq.heappop(bucket)                      # read or touched while evictable: file it again
                self._refile(block_id)
                continue
            heapq.heappop(bucket)
        if bucket is not None:
            del self._buckets[key]
        return None

    def _refile(self, block_id: int) -> None:
        block = self._where.pop(block_id)[2]
        self.add(block)
