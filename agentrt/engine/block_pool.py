"""KV block pool: ref-counted fixed-size blocks, an O(1) free queue, and a hash-chain prefix cache.

A block is in exactly one of three states:
  * in use        ref_count > 0 (held by one or more requests' block tables)
  * cached free   ref_count == 0 and block_hash is set: reusable by a prefix hit, evictable
  * free          ref_count == 0 and no hash: handed out first by `allocate`

Cached blocks form a forest (every cached block knows its parent). Eviction removes leaves only,
and the order among evictable leaves is the eviction policy's decision.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from agentrt.engine.eviction import EvictionPolicy, LRUPolicy


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash", "token_ids", "parent",
                 "num_cached_children", "last_access", "readers", "prev", "next")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None
        self.parent: Block | None = None
        self.num_cached_children = 0
        self.last_access = 0
        self.readers: dict[tuple, int] = {}   # (program, agent) -> clock of its last use; policies rank by it
        self.prev: Block | None = None
        self.next: Block | None = None

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_count}, hash={self.block_hash})"


class FreeBlockQueue:
    """Intrusive doubly linked list of blocks: append, popleft and remove are all O(1)."""

    __slots__ = ("head", "tail", "size")

    def __init__(self, blocks: Iterable[Block] = ()):
        self.head: Block | None = None
        self.tail: Block | None = None
        self.size = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self.size

    def append(self, block: Block) -> None:
        block.prev, block.next = self.tail, None
        if self.tail is None:
            self.head = block
        else:
            self.tail.next = block
        self.tail = block
        self.size += 1

    def popleft(self) -> Block:
        block = self.head
        if block is None:
            raise IndexError("pop from an empty FreeBlockQueue")
        self.remove(block)
        return block

    def remove(self, block: Block) -> None:
        if block.prev is None:
            self.head = block.next
        else:
            block.prev.next = block.next
        if block.next is None:
            self.tail = block.prev
        else:
            block.next.prev = block.prev
        block.prev = block.next = None
        self.size -= 1


def chain_hash(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given its parent's hash: equal hashes mean equal whole prefixes."""
    return hash((parent_hash, token_ids))


MAX_READERS = 8          # most recent (program, agent) readers remembered per block


class NoFreeBlocks(RuntimeError):
    """Raised when every block is in use; the scheduler answers with preemption."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, policy: EvictionPolicy | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[int, Block] = {}
        self.policy = policy if policy is not None else LRUPolicy()
        self.clock = 0
        self._num_cached_free = 0   # cached blocks no request holds (leaves or not): all reclaimable
        self.stats_hit_blocks = 0
        self.stats_queried_blocks = 0
        self.stats_evicted_blocks = 0
        self.access_log: list[int] | None = None   # set to [] to record every full-block use (Belady bound)
        self._ever_cached: set[int] = set()          # hashes computed at least once
        self.stats_recomputed_blocks = 0             # full blocks computed again after an eviction

    # ---------------------------------------------------------------- capacity
    @property
    def num_free(self) -> int:
        """Blocks that `allocate` can hand out now: free ones plus every unreferenced cached one
        (evicting a leaf makes its parent a leaf, so whole chains are reclaimable)."""
        return len(self.free_queue) + self._num_cached_free

    @property
    def num_cached_free(self) -> int:
        return self._num_cached_free

    @property
    def num_in_use(self) -> int:
        return self.num_blocks - len(self.free_queue) - self.num_cached_free

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    # ---------------------------------------------------------------- allocation
    def allocate(self, n: int) -> list[Block]:
        if n > self.num_free:
            raise NoFreeBlocks(f"need {n} blocks, {self.num_free} can be freed")
        return [self._take_one() for _ in range(n)]

    def _take_one(self) -> Block:
        if len(self.free_queue):
            block = self.free_queue.popleft()
        else:
            block = self.policy.pop()
            self._uncache(block)
            self._num_cached_free -= 1
            self.stats_evicted_blocks += 1
        block.ref_count = 1
        block.last_access = self.clock
        return block

    def _uncache(self, block: Block) -> None:
        del self.cached[block.block_hash]
        parent = block.parent
        if parent is not None:
            parent.num_cached_children -= 1
            if parent.num_cached_children == 0 and parent.ref_count == 0:
                self.policy.add(parent)
        block.block_hash = block.token_ids = block.parent = None
        block.readers = {}

    def touch(self, blocks: Sequence[Block]) -> None:
        """Take one more reference on blocks found in the prefix cache."""
        for block in blocks:
            if block.ref_count == 0:
                self._num_cached_free -= 1
                if block.num_cached_children == 0:
                    self.policy.remove(block)
            block.ref_count += 1
            block.last_access = self.clock

    def free(self, blocks: Sequence[Block]) -> None:
        """Drop one reference on each block; tail blocks first so leaves become evictable first."""
        for block in reversed(blocks):
            if block.ref_count <= 0:
                raise AssertionError(f"double free of {block}")
            block.ref_count -= 1
            if block.ref_count:
                continue
            if block.block_hash is None:
                self.free_queue.append(block)
                continue
            self._num_cached_free += 1
            if block.num_cached_children == 0:
                self.policy.add(block)

    def set_policy(self, policy: EvictionPolicy) -> None:
        """Switch the eviction policy; the evictable leaves move over to it."""
        leaves = list(self.policy.blocks())
        for block in leaves:
            self.policy.remove(block)
        self.policy = policy
        for block in leaves:
            policy.add(block)

    def note_use(self, blocks: Sequence[Block], reader: tuple | None) -> None:
        """Record who read or wrote these cached blocks (for next-use ranking) and, when logging,
        the use itself."""
        if reader is not None:
            for block in blocks:
                readers = block.readers
                readers[reader] = self.clock
                if len(readers) > MAX_READERS:
                    del readers[min(readers, key=readers.get)]
        if self.access_log is not None:
            self.access_log.extend(b.block_hash for b in blocks if b.block_hash is not None)

    # ---------------------------------------------------------------- prefix cache
    def cache_full_block(self, block: Block, parent: Block | None, token_ids: tuple[int, ...]) -> Block:
        """Register a block whose block_size tokens are all computed; returns the cached block for
        that content, which is another one when the same prefix was computed twice concurrently."""
        if block.block_hash is not None or (parent is not None and parent.block_hash is None):
            return block  # already cached, or the chain was cut above (a hash collision)
        h = chain_hash(parent.block_hash if parent is not None else None, token_ids)
        canonical = self.cached.get(h)
        if canonical is not None and canonical.token_ids == token_ids:
            return canonical
        if canonical is not None:
            return block  # a hash collision: leave this block out of the cache
        block.block_hash, block.token_ids, block.parent = h, token_ids, parent
        self.cached[h] = block
        if h in self._ever_cached:
            self.stats_recomputed_blocks += 1
        else:
            self._ever_cached.add(h)
        if parent is not None:
            if parent.num_cached_children == 0 and parent.ref_count == 0:
                self.policy.remove(parent)
            parent.num_cached_children += 1
        return block

    def match_prefix(self, block_hashes: Sequence[int], block_tokens: Sequence[tuple[int, ...]]) -> list[Block]:
        """Longest run of cached blocks for a chain of hashes (tokens compared to rule out collisions)."""
        hits: list[Block] = []
        for h, toks in zip(block_hashes, block_tokens):
            block = self.cached.get(h)
            if block is None or block.token_ids != toks:
                break
            hits.append(block)
        self.stats_queried_blocks += len(block_hashes)
        self.stats_hit_blocks += len(hits)
        return hits

    def reset_prefix_cache(self) -> int:
        """Drop every cached block that no request holds; returns how many were dropped."""
        dropped = 0
        while len(self.policy):
            block = self.policy.pop()
            self._uncache(block)
            self._num_cached_free -= 1
            self.free_queue.append(block)
            dropped += 1
        return dropped

    # ---------------------------------------------------------------- invariants
    def check_invariants(self) -> None:
        """Raise AssertionError if the pool's bookkeeping is inconsistent (used by tests)."""
        free_ids, node = [], self.free_queue.head
        while node is not None:
            free_ids.append(node.block_id)
            node = node.next
        assert len(free_ids) == len(self.free_queue) == len(set(free_ids))
        evictable = {b.block_id for b in self.policy.blocks()}
        for block in self.blocks:
            assert block.ref_count >= 0, block
            in_free = block.block_id in free_ids
            assert in_free == (block.ref_count == 0 and block.block_hash is None), block
            is_leaf_free = block.ref_count == 0 and block.block_hash is not None and block.num_cached_children == 0
            assert (block.block_id in evictable) == is_leaf_free, block
            if block.block_hash is not None:
                assert self.cached[block.block_hash] is block
                if block.parent is not None:
                    assert block.parent.block_hash is not None
                    assert block.parent.ref_count >= block.ref_count, (block.parent, block)
            children = sum(1 for b in self.cached.values() if b.parent is block)
            assert children == block.num_cached_children, (block, children)
        cached_free = sum(1 for b in self.cached.values() if b.ref_count == 0)
        assert cached_free == self._num_cached_free, (cached_free, self._num_cached_free)
        in_use = sum(1 for b in self.blocks if b.ref_count > 0)
        assert in_use == self.num_in_use and len(free_ids) + cached_free + in_use == self.num_blocks
