"""KV block pool: ref-counted fixed-size blocks, an O(1) free queue, and a hash-chain prefix cache.

A block is in exactly one of three states:
  * in use        ref_count > 0 (held by one or more requests' block tables)
  * cached free   ref_count == 0 and block_hash is set: reusable by a prefix hit, evictable
  * free          ref_count == 0 and no hash: handed out first by `allocate`

Cached blocks form a forest (every cached block knows its parent). Eviction removes leaves only,
and the order among evictable leaves is the eviction policy's decision.

With a host tier, an evicted leaf is swapped out (its KV copied to a host slot, unless the
policy's swap filter says drop it) and a prefix match can continue into the host tier, loading blocks
back. The pool only records these copies; the engine takes them (`take_moves`) after each
schedule and runs them before the step's compute: swap-outs first (their blocks still hold the
evicted KV), then loads. Pins keep host slots stable while a copy is pending (see host_tier).

Every cached block (and host entry) carries its chain's root: None, or a cache salt's root
(`salt_root`), which is the first block's parent hash. Matches compare it beside the tokens, so a
salted chain and an unsalted one (or two salts) never share a block, even on a hash collision.

What the pool does is published to registered observers (`agentrt.engine.observe`); with none,
nothing is published.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from agentrt.engine.blocks import MAX_READERS, Block, FreeBlockQueue, chain_hash
from agentrt.engine.disk_link import DiskLink
from agentrt.engine.eviction import EvictionPolicy, LRUPolicy
from agentrt.engine.host_tier import HostEntry, HostTier, Moves
from agentrt.engine.observe import EngineObserver
from agentrt.engine.pool_checks import check_pool


class NoFreeBlocks(RuntimeError):
    """Raised when every block is in use; the scheduler answers with preemption."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, policy: EvictionPolicy | None = None,
                 host: HostTier | None = None, disk: DiskLink | None = None):
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
        self.observers: tuple[EngineObserver, ...] = ()
        self._ever_cached: set[int] = set()          # hashes computed at least once
        self.stats_recomputed_blocks = 0             # full blocks computed again after an eviction
        self.host = host
        self._swap_filter: Callable[[Block], bool] | None = None   # per victim: swap out (True) or drop
        self.prefetch_pins = 0                       # host entries pinned by prefetches in flight
        self.stats_swapped_out_blocks = 0            # victims copied to the host tier
        self.stats_dropped_blocks = 0                # victims dropped (no host tier, filtered, host full)
        self.stats_loaded_blocks = 0                 # host blocks loaded back on demand
        self.stats_prefetched_blocks = 0             # host blocks brought back ahead by a prefetch
        self.disk = disk                             # the disk tier (agentrt.engine.disk_link), or None
        if disk is not None and host is not None:
            host.on_evict = disk.on_host_evicted

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
            for observer in self.observers:
                observer.on_evict(block)
            self._swap_out(block)
            self._uncache(block)
            self._num_cached_free -= 1
            self.stats_evicted_blocks += 1
        block.ref_count = 1
        block.last_access = self.clock
        return block

    def _swap_out(self, block: Block) -> None:
        """Record the copy of an evicted leaf to the host tier (runs before the block is rewritten)."""
        host = self.host
        stored = False
        if self.disk is not None and self.disk.cancel_load(block.block_id):
            host = None                             # its KV never arrived from disk: nothing to keep
        elif self.disk is not None and host is None:
            self.disk.on_dropped(block)
        if host is None or (self._swap_filter is not None and not self._swap_filter(block)):
            self.stats_dropped_blocks += 1
        else:
            parent_hash = block.parent.block_hash if block.parent is not None else None
            stored = bool(host.put(block.block_id, block.block_hash, parent_hash, block.token_ids, block.readers,
                                   self.clock, block.root))
            if stored:
                self.stats_swapped_out_blocks += 1
            elif host.lookup(block.block_hash, parent_hash, block.token_ids, block.root) is None:
                self.stats_dropped_blocks += 1      # host full of pinned entries, or a collision
        for observer in self.observers:
            observer.on_swap_out(block, stored)

    def _uncache(self, block: Block) -> None:
        if self.host is not None and self.host.pending_in:
            self.host.cancel_load(block.block_id)
        if self.disk is not None and self.disk.pending_in:
            self.disk.cancel_load(block.block_id)
        del self.cached[block.block_hash]
        parent = block.parent
        if parent is not None:
            parent.num_cached_children -= 1
            if parent.num_cached_children == 0 and parent.ref_count == 0:
                self.policy.add(parent)
        block.block_hash = block.token_ids = block.parent = block.root = None
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
            if self.observers and block.block_hash is not None:
                for observer in self.observers:
                    observer.on_release(block.block_hash)
            if block.ref_count:
                continue
            if block.block_hash is None:
                self.free_queue.append(block)
                continue
            self._num_cached_free += 1
            if block.num_cached_children == 0:
                self.policy.add(block)

    def set_policy(self, policy: EvictionPolicy, swap_filter: Callable[[Block], bool] | None = None) -> None:
        """Switch the eviction policy (the evictable leaves move over to it) and the swap filter
        (None: every victim that fits goes to the host tier)."""
        leaves = list(self.policy.blocks())
        for block in leaves:
            self.policy.remove(block)
        self.policy = policy
        for block in leaves:
            policy.add(block)
        self._swap_filter = swap_filter

    def add_observer(self, observer: EngineObserver) -> None:
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: EngineObserver) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def note_use(self, blocks: Sequence[Block], reader: tuple | None) -> None:
        """Record who read or wrote these cached blocks (for next-use ranking) and publish the use."""
        if reader is not None:
            for block in blocks:
                readers = block.readers
                readers[reader] = self.clock
                if len(readers) > MAX_READERS:
                    del readers[min(readers, key=readers.get)]
        if self.observers:
            hashes = [b.block_hash for b in blocks if b.block_hash is not None]
            # every block but those held with unfinished (unhashed) KV could serve the cache now
            room = len(self.free_queue) + len(self.cached)
            for observer in self.observers:
                observer.on_access(hashes, room)

    # ---------------------------------------------------------------- prefix cache
    def cache_full_block(self, block: Block, parent: Block | None, token_ids: tuple[int, ...],
                         root: int | None = None) -> Block:
        """Register a block whose block_size tokens are all computed; returns the cached block for
        that content, which is another one when the same prefix was computed twice concurrently.
        `root`: the chain's salt root (used for a first block; others inherit their parent's)."""
        if block.block_hash is not None or (parent is not None and parent.block_hash is None):
            return block  # already cached, or the chain was cut above (a hash collision)
        root = parent.root if parent is not None else root
        h = chain_hash(parent.block_hash if parent is not None else root, token_ids)
        canonical = self.cached.get(h)
        if canonical is not None and canonical.token_ids == token_ids and canonical.root == root:
            return canonical
        if canonical is not None:
            return block  # a hash collision: leave this block out of the cache
        if h in self._ever_cached:
            self.stats_recomputed_blocks += 1
            for observer in self.observers:
                observer.on_recompute(h)
        else:
            self._ever_cached.add(h)
        self._insert(block, parent, h, token_ids, root)
        if self.disk is not None:
            self.disk.on_computed(block)
        return block

    def _insert(self, block: Block, parent: Block | None, h: int, token_ids: tuple[int, ...],
                root: int | None = None) -> None:
        block.block_hash, block.token_ids, block.parent, block.root = h, token_ids, parent, root
        self.cached[h] = block
        if parent is not None:
            if parent.num_cached_children == 0 and parent.ref_count == 0:
                self.policy.remove(parent)
            parent.num_cached_children += 1

    def match_prefix(self, block_hashes: Sequence[int], block_tokens: Sequence[tuple[int, ...]],
                     root: int | None = None) -> list[Block]:
        """Longest run of cached blocks for a chain of hashes under `root` (tokens and root compared
        to rule out collisions)."""
        hits: list[Block] = []
        for h, toks in zip(block_hashes, block_tokens):
            block = self.cached.get(h)
            if block is None or block.token_ids != toks or block.root != root:
                break
            hits.append(block)
        self.stats_queried_blocks += len(block_hashes)
        self.stats_hit_blocks += len(hits)
        return hits

    # ---------------------------------------------------------------- host tier
    def load_from_host(self, hashes: Sequence[int], block_tokens: Sequence[tuple[int, ...]],
                       parent: Block | None, root: int | None = None) -> list[Block]:
        """Continue a device prefix hit (ending at `parent`) into the host tier: each host hit gets
        a device block, cached under its parent at once, held by the caller (ref 1), its copy
        pending until `take_moves`. Loads no more blocks than are free or evictable now."""
        host = self.host
        if host is None or not hashes:
            return []
        entries = host.match(hashes, block_tokens, parent.block_hash if parent is not None else None,
                             self.num_free, root)
        for entry in entries:                     # pin all first: the allocations' swap-outs may evict host leaves
            host.pin(entry, self.clock)
        loaded: list[Block] = []
        for entry in entries:
            block = self._take_one()
            if self.register_loaded(block, parent, entry) is not block:
                self.free([block])                # cannot happen right after a device miss; stay safe
                break
            host.pending_in[block.block_id] = entry
            loaded.append(block)
            parent = block
        for entry in entries[len(loaded):]:
            host.unpin(entry)
        self.note_loaded(len(loaded), prefetched=False)
        return loaded

    def load_from_disk(self, hashes: Sequence[int], block_tokens: Sequence[tuple[int, ...]], start: int,
                       parent: Block | None) -> list[Block]:
        """Continue a prefix hit (blocks :start, ending at `parent`) into the disk tier: blocks whose
        files verify get a device block each, cached at once, held by the caller, their payload
        copied in before the step's compute (`disk.take_loads`)."""
        payloads = self.disk.match(hashes, block_tokens, start, self.num_free)
        loaded: list[Block] = []
        for j, payload in enumerate(payloads, start):
            if hashes[j] in self.cached:
                break                              # cannot happen right after a miss; stay safe
            block = self._take_one()
            self._insert(block, parent, hashes[j], block_tokens[j])
            self._ever_cached.add(hashes[j])
            self.disk.pending_in[block.block_id] = payload
            loaded.append(block)
            parent = block
        self.disk.stats_loaded += len(loaded)
        return loaded

    def note_loaded(self, n: int, *, prefetched: bool) -> None:
        """Count (and publish) blocks that came back from the host tier."""
        if prefetched:
            self.stats_prefetched_blocks += n
        else:
            self.stats_loaded_blocks += n
        if n:
            for observer in self.observers:
                observer.on_load(n, prefetched)

    def register_loaded(self, block: Block, parent: Block | None, entry: HostEntry) -> Block | None:
        """Cache a block whose KV is (or is about to be) the host entry's; returns the block that
        now stands for that content, or None when the chain is cut (parent uncached, collision)."""
        canonical = self.cached.get(entry.block_hash)
        if canonical is not None:
            return canonical if canonical.token_ids == entry.token_ids and canonical.root == entry.root else None
        if parent is not None and parent.block_hash is None:
            return None
        self._insert(block, parent, entry.block_hash, entry.token_ids, entry.root)
        block.readers = dict(entry.readers)
        block.last_access = self.clock
        return block

    def take_moves(self) -> Moves:
        """The block copies recorded since the last call, to run now (swap-outs, then loads)."""
        return self.host.take_moves() if self.host is not None else Moves([], [], [], [])

    def reset_prefix_cache(self) -> int:
        """Drop every cached block that no request holds, and every unpinned host entry; returns how
        many device blocks were dropped."""
        if self.host is not None:
            self.host.clear()
        dropped = 0
        while len(self.policy):
            block = self.policy.pop()
            self._uncache(block)
            self._num_cached_free -= 1
            self.free_queue.append(block)
            dropped += 1
        return dropped

    def check_invariants(self) -> None:
        """Raise AssertionError if the pool's (and host tier's) bookkeeping is inconsistent (tests)."""
        check_pool(self)
