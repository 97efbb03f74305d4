"""KV block pool: FreeBlockQueue, LRUPolicy, BlockPool unit tests, and a hypothesis state machine
that drives BlockPool with random allocate / share / append / free / evict / reset sequences
against a model of what the pool must hold."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agentrt.engine.host_tier import HostTier
from agentrt.engine.block_pool import Block, BlockPool, FreeBlockQueue, NoFreeBlocks, chain_hash
from agentrt.engine.eviction import LRUPolicy


# ------------------------------------------------------------------------------------------ FreeBlockQueue
def queue_ids(q: FreeBlockQueue) -> list[int]:
    """Walk the links both ways; they must agree with each other and with len()."""
    forward, node = [], q.head
    while node is not None:
        forward.append(node.block_id)
        node = node.next
    backward, node = [], q.tail
    while node is not None:
        backward.append(node.block_id)
        node = node.prev
    assert forward == backward[::-1]
    assert len(forward) == len(q)
    return forward


def test_free_queue_fifo_order():
    blocks = [Block(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    assert queue_ids(q) == [0, 1, 2, 3, 4]
    assert [q.popleft().block_id for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(q) == 0 and q.head is None and q.tail is None
    with pytest.raises(IndexError):
        q.popleft()


def test_free_queue_remove_middle_head_tail():
    blocks = [Block(i) for i in range(6)]
    q = FreeBlockQueue(blocks)
    q.remove(blocks[3])                       # middle
    assert queue_ids(q) == [0, 1, 2, 4, 5]
    assert blocks[3].prev is None and blocks[3].next is None
    q.remove(blocks[0])                       # head
    assert queue_ids(q) == [1, 2, 4, 5] and q.head is blocks[1] and blocks[1].prev is None
    q.remove(blocks[5])                       # tail
    assert queue_ids(q) == [1, 2, 4] and q.tail is blocks[4] and blocks[4].next is None
    q.append(blocks[3])                       # a removed block can come back, at the tail
    assert queue_ids(q) == [1, 2, 4, 3]
    for b in (blocks[2], blocks[1], blocks[3], blocks[4]):
        q.remove(b)
    assert queue_ids(q) == [] and q.head is None and q.tail is None
    q.append(blocks[0])
    assert queue_ids(q) == [0] and q.head is q.tail is blocks[0]


def test_free_queue_remove_is_constant_time():
    """Removing k blocks from the middle costs the same whether the queue holds 2k or 100x more."""
    def cost(size: int, k: int = 2000) -> float:
        blocks = [Block(i) for i in range(size)]
        q = FreeBlockQueue(blocks)
        middle = blocks[size // 2 - k // 2: size // 2 + k // 2]
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for b in middle:
                q.remove(b)
            best = min(best, time.perf_counter() - t0)
            for b in middle:
                q.append(b)
        return best

    small, large = cost(4_000), cost(200_000)
    assert large < 10 * small, (small, large)      # O(n) removal would be ~50x


# ------------------------------------------------------------------------------------------ LRUPolicy
def block_at(i: int, last_access: int) -> Block:
    b = Block(i)
    b.last_access = last_access
    return b


def test_lru_pops_least_recently_used_first():
    policy = LRUPolicy()
    blocks = [block_at(i, t) for i, t in enumerate([5, 1, 9, 3, 7])]
    for b in blocks:
        policy.add(b)
    assert len(policy) == 5
    assert {b.block_id for b in policy.blocks()} == {0, 1, 2, 3, 4}
    assert [policy.pop().block_id for _ in range(5)] == [1, 3, 0, 4, 2]
    assert len(policy) == 0
    with pytest.raises(IndexError):
        policy.pop()


def test_lru_ties_break_by_insertion_order():
    policy = LRUPolicy()
    for i in (4, 2, 7):
        policy.add(block_at(i, 10))
    assert [policy.pop().block_id for _ in range(3)] == [4, 2, 7]


def test_lru_remove_and_readd():
    policy = LRUPolicy()
    blocks = [block_at(i, i) for i in range(4)]
    for b in blocks:
        policy.add(b)
    policy.remove(blocks[0])                 # reused by a hit: not evictable
    policy.remove(blocks[2])
    assert len(policy) == 2 and {b.block_id for b in policy.blocks()} == {1, 3}
    blocks[0].last_access = 10               # freed again later, after a new access
    policy.add(blocks[0])
    assert [policy.pop().block_id for _ in range(3)] == [1, 3, 0]


def test_lru_many_removals_compact_without_losing_blocks():
    policy = LRUPolicy()
    blocks = [block_at(i, 1000 - i) for i in range(300)]
    for b in blocks:
        policy.add(b)
    for b in blocks[:250]:
        policy.remove(b)
    assert len(policy) == 50
    assert len(policy._heap) <= 2 * 50 + 64 + 1      # stale entries were dropped
    popped = [policy.pop().block_id for _ in range(50)]
    assert popped == list(range(299, 249, -1))


def test_pool_evicts_least_recently_used_leaf_first():
    pool = BlockPool(num_blocks=4, block_size=2)
    pool.tick()
    a = pool.allocate(1)[0]
    pool.cache_full_block(a, None, (1, 1))
    pool.tick()
    b = pool.allocate(1)[0]
    pool.cache_full_block(b, None, (2, 2))
    pool.tick()
    c = pool.allocate(1)[0]
    pool.cache_full_block(c, None, (3, 3))
    pool.free([a]); pool.free([c]); pool.free([b])          # free order does not matter, access time does
    pool.tick()
    pool.touch([a]); pool.free([a])                          # a is now the most recently used
    pool.allocate(1)                                          # the one free block
    victims = [pool.allocate(1)[0] for _ in range(3)]
    assert [v.block_id for v in victims] == [b.block_id, c.block_id, a.block_id]
    pool.check_invariants()


def test_pool_parent_becomes_leaf_at_its_own_old_access_time():
    """A parent made a leaf by its child's eviction enters the LRU at its own (old) access time,
    ahead of a younger leaf that was already waiting."""
    pool = BlockPool(num_blocks=3, block_size=2)
    pool.tick()                                               # t=1: chain parent -> child
    parent, child = pool.allocate(2)
    pool.cache_full_block(parent, None, (1, 2))
    pool.cache_full_block(child, parent, (3, 4))
    pool.tick()                                               # t=2: an unrelated leaf
    young = pool.allocate(1)[0]
    pool.cache_full_block(young, None, (9, 9))
    pool.free([parent, child])
    pool.free([young])
    assert pool.num_cached_free == 3
    first = pool.allocate(1)[0]
    assert first is child                                     # oldest leaf (t=1); parent is not a leaf yet
    second = pool.allocate(1)[0]
    assert second is parent                                   # t=1 < t=2: a tail-append queue would pick young
    third = pool.allocate(1)[0]
    assert third is young
    pool.check_invariants()


# ------------------------------------------------------------------------------------------ BlockPool units
def test_pool_allocate_free_and_capacity():
    pool = BlockPool(num_blocks=4, block_size=16)
    blocks = pool.allocate(3)
    assert [b.ref_count for b in blocks] == [1, 1, 1]
    assert pool.num_in_use == 3 and pool.num_free == 1
    with pytest.raises(NoFreeBlocks):
        pool.allocate(2)
    assert pool.num_in_use == 3                               # a failed allocate takes nothing
    pool.free(blocks)
    assert pool.num_in_use == 0 and pool.num_free == 4
    with pytest.raises(AssertionError, match="double free"):
        pool.free(blocks[:1])
    pool.check_invariants()


def test_pool_rejects_bad_sizes():
    with pytest.raises(ValueError):
        BlockPool(0, 16)
    with pytest.raises(ValueError):
        BlockPool(4, 0)


def test_pool_shared_blocks_are_ref_counted():
    pool = BlockPool(num_blocks=4, block_size=2)
    [b] = pool.allocate(1)
    pool.cache_full_block(b, None, (5, 6))
    h = chain_hash(None, (5, 6))
    assert pool.match_prefix([h], [(5, 6)]) == [b]
    pool.touch([b])
    assert b.ref_count == 2
    pool.free([b])
    assert b.ref_count == 1 and pool.num_in_use == 1
    pool.free([b])
    assert pool.num_in_use == 0 and pool.num_cached_free == 1
    pool.check_invariants()


def test_pool_match_prefix_stops_at_first_miss_and_checks_tokens():
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b, c = pool.allocate(3)
    ha = chain_hash(None, (1, 2))
    hb = chain_hash(ha, (3, 4))
    hc = chain_hash(hb, (5, 6))
    pool.cache_full_block(a, None, (1, 2))
    pool.cache_full_block(b, a, (3, 4))
    pool.cache_full_block(c, b, (5, 6))
    assert pool.match_prefix([ha, hb, hc], [(1, 2), (3, 4), (5, 6)]) == [a, b, c]
    assert pool.match_prefix([ha, chain_hash(ha, (0, 0)), hc], [(1, 2), (0, 0), (5, 6)]) == [a]
    assert pool.match_prefix([ha, hb], [(1, 2), (3, 9)]) == [a]          # tokens disagree with the hash
    pool.free([a, b, c])
    pool.check_invariants()


def test_pool_cache_full_block_dedupes_concurrent_copies():
    pool = BlockPool(num_blocks=4, block_size=2)
    x, y = pool.allocate(2)
    assert pool.cache_full_block(x, None, (7, 7)) is x
    assert pool.cache_full_block(y, None, (7, 7)) is x                   # same content: the canonical one
    assert y.block_hash is None
    assert pool.cache_full_block(x, None, (7, 7)) is x                   # already cached: no-op
    pool.free([x, y])
    pool.check_invariants()


def test_pool_reset_prefix_cache_keeps_held_blocks():
    pool = BlockPool(num_blocks=6, block_size=2)
    a, b, c = pool.allocate(3)
    pool.cache_full_block(a, None, (1, 1))
    pool.cache_full_block(b, a, (2, 2))
    pool.cache_full_block(c, b, (3, 3))
    d, e = pool.allocate(2)
    pool.cache_full_block(d, None, (4, 4))
    pool.cache_full_block(e, d, (5, 5))
    pool.free([a, b, c])
    assert pool.reset_prefix_cache() == 3
    assert set(pool.cached.values()) == {d, e}
    pool.check_invariants()
    pool.free([d, e])
    assert pool.reset_prefix_cache() == 2
    assert not pool.cached and len(pool.free_queue) == 6
    pool.check_invariants()


def test_pool_whole_cached_chain_is_allocatable():
    """Every unreferenced cached block can be handed out: evicting a leaf makes its parent a leaf.
    num_free must count the whole chain, not only the current leaves, or a request that needs
    more blocks than free + leaves is refused although the pool could serve it."""
    pool = BlockPool(num_blocks=6, block_size=2)
    chain = pool.allocate(5)
    parent = None
    for i, b in enumerate(chain):
        pool.cache_full_block(b, parent, (i, i))
        parent = b
    pool.free(chain)
    assert pool.num_in_use == 0 and pool.num_cached_free == 5
    assert pool.num_free == 6
    blocks = pool.allocate(6)
    assert len(blocks) == 6 and not pool.cached
    pool.check_invariants()


# ------------------------------------------------------------------------------------------ state machine
TOKENS = st.tuples(st.integers(0, 2), st.integers(0, 2))     # block_size 2, tiny alphabet: many shared prefixes
CHAINS = st.lists(TOKENS, min_size=1, max_size=4)


class Seq:
    """A live sequence: its block table and the token tuple of every block; the last block may be
    partial (allocated, not yet registered in the prefix cache)."""

    def __init__(self, blocks, tokens, partial: bool, scratch: bool = False):
        self.blocks = blocks
        self.tokens = tokens
        self.partial = partial
        self.scratch = scratch        # uncached blocks grabbed by evict_all_cached

    @property
    def full_chain(self):
        return () if self.scratch else tuple(self.tokens[: len(self.blocks) - self.partial])


def hashes_of(chain) -> list[int]:
    out, h = [], None
    for toks in chain:
        h = chain_hash(h, tuple(toks))
        out.append(h)
    return out


class BlockPoolMachine(RuleBasedStateMachine):
    NUM_BLOCKS = 8
    BLOCK_SIZE = 2

    def __init__(self):
        super().__init__()
        self.pool = BlockPool(self.NUM_BLOCKS, self.BLOCK_SIZE)
        self.seqs: list[Seq] = []
        self.registry: dict[tuple, int] = {}      # chain of token tuples -> block id the pool must cache it in
        self.access: dict[int, int] = {}          # block id -> last allocate/touch clock (model of LRU key)
        self.evicted_chains: set[tuple] = set()

    # ---------------------------------------------------------------- model helpers
    def held(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for s in self.seqs:
            for b in s.blocks:
                counts[b.block_id] = counts.get(b.block_id, 0) + 1
        return counts

    def chain_of(self, block_id: int):
        for chain, bid in self.registry.items():
            if bid == block_id:
                return chain
        return None

    def evictable_leaves(self) -> set[int]:
        held = self.held()
        leaves = set()
        for chain, bid in self.registry.items():
            has_child = any(len(c) == len(chain) + 1 and c[:-1] == chain for c in self.registry)
            if bid not in held and not has_child:
                leaves.add(bid)
        return leaves

    def capacity(self, exclude=()) -> int:
        """Blocks allocate() can hand out one at a time: free ones plus every unreferenced cached
        block (evicting a leaf makes its parent a leaf)."""
        held = self.held()
        skip = {b.block_id for b in exclude}
        return len(self.pool.free_queue) + sum(1 for bid in self.registry.values()
                                               if bid not in held and bid not in skip)

    def expected_match(self, chain) -> list[int]:
        out = []
        for i in range(1, len(chain) + 1):
            bid = self.registry.get(tuple(chain[:i]))
            if bid is None:
                break
            out.append(bid)
        return out

    def take(self, n: int) -> list[Block]:
        """allocate(n), checking every eviction it causes against the model (one at a time, so the
        order is observable)."""
        got = []
        for _ in range(n):
            free_before = len(self.pool.free_queue)
            leaves = self.evictable_leaves()
            [block] = self.pool.allocate(1)
            if free_before == 0:
                # an eviction: an unreferenced leaf, least recently used among leaves
                assert block.block_id in leaves, (block, leaves)
                assert self.access[block.block_id] == min(self.access[b] for b in leaves)
                chain = self.chain_of(block.block_id)
                assert chain is not None
                del self.registry[chain]
                self.evicted_chains.add(chain)
            else:
                assert self.chain_of(block.block_id) is None      # plain free blocks are used first
            assert block.block_hash is None and block.ref_count == 1
            self.access[block.block_id] = self.pool.clock
            got.append(block)
        return got

    def register(self, seq: Seq, j: int) -> None:
        """cache_full_block(seq.blocks[j]) the way the scheduler does after a step (dedupe included)."""
        block = seq.blocks[j]
        parent = seq.blocks[j - 1] if j else None
        chain = tuple(seq.tokens[: j + 1])
        canonical = self.pool.cache_full_block(block, parent, tuple(seq.tokens[j]))
        if chain in self.registry:
            assert canonical.block_id == self.registry[chain]
        else:
            assert canonical is block
            self.registry[chain] = block.block_id
            self.evicted_chains.discard(chain)
        if canonical is not block:
            self.pool.touch([canonical])
            self.access[canonical.block_id] = self.pool.clock
            self.pool.free([block])
            seq.blocks[j] = canonical

    # ---------------------------------------------------------------- rules
    @initialize()
    def start(self):
        self.pool.check_invariants()

    @rule(chain=CHAINS, partial=st.booleans())
    def allocate_new(self, chain, partial):
        """A request with a fresh prompt: prefix-match, then allocate the rest and register them."""
        self.pool.tick()
        full = chain[:-1] if partial else chain
        hits = self.pool.match_prefix(hashes_of(full), [tuple(t) for t in full])
        assert [b.block_id for b in hits] == self.expected_match(full)
        need = len(chain) - len(hits)
        if need > self.capacity(exclude=hits):
            return
        self.pool.touch(hits)
        for b in hits:
            self.access[b.block_id] = self.pool.clock
        seq = Seq(list(hits) + self.take(need), [tuple(t) for t in chain], partial)
        self.seqs.append(seq)
        for j in range(len(hits), len(chain) - partial):
            self.register(seq, j)

    @precondition(lambda self: any(s.full_chain for s in self.seqs))
    @rule(data=st.data(), extra=CHAINS)
    def share_prefix(self, data, extra):
        """A request whose prompt starts with a live request's cached prefix: touch those blocks."""
        self.pool.tick()
        src = data.draw(st.sampled_from([s for s in self.seqs if s.full_chain]))
        if not src.full_chain:
            return
        k = data.draw(st.integers(1, len(src.full_chain)))
        chain = list(src.full_chain[:k]) + list(extra)
        hits = self.pool.match_prefix(hashes_of(chain), chain)
        assert [b.block_id for b in hits] == self.expected_match(chain)
        assert len(hits) >= k
        assert hits[:k] == src.blocks[:k]
        self.pool.touch(hits)
        for b in hits:
            self.access[b.block_id] = self.pool.clock
        self.seqs.append(Seq(list(hits), [tuple(t) for t in chain[:len(hits)]], False))

    @rule(chain=CHAINS)
    def compute_without_matching(self, chain):
        """Two requests computing the same prefix in one step: allocate fresh blocks, then
        registering finds the canonical copy and the duplicate goes back to the pool."""
        self.pool.tick()
        if len(chain) > self.capacity():
            return
        seq = Seq(self.take(len(chain)), [tuple(t) for t in chain], False)
        self.seqs.append(seq)
        for j in range(len(chain)):
            self.register(seq, j)

    @precondition(lambda self: any(not s.scratch for s in self.seqs))
    @rule(data=st.data(), toks=TOKENS, leave_partial=st.booleans())
    def append(self, data, toks, leave_partial):
        """A decoding request fills its partial block (and registers it) or grows by one block."""
        self.pool.tick()
        seq = data.draw(st.sampled_from([s for s in self.seqs if not s.scratch]))
        if seq.partial:
            seq.partial = False
            self.register(seq, len(seq.blocks) - 1)
            return
        if not self.capacity():
            return
        seq.blocks += self.take(1)
        seq.tokens.append(tuple(toks))
        seq.partial = leave_partial
        if not leave_partial:
            self.register(seq, len(seq.blocks) - 1)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(self.seqs))
        self.seqs.remove(seq)
        self.pool.free(seq.blocks)

    @rule()
    def evict_all_cached(self):
        """Allocate while only cached blocks remain: every eviction is checked by take()."""
        self.pool.tick()
        n = self.capacity()
        if not n:
            with pytest.raises(NoFreeBlocks):
                self.pool.allocate(1)
            return
        self.seqs.append(Seq(self.take(n), [(-1, -1)] * n, False, scratch=True))
        assert not self.registry or all(bid in self.held() for bid in self.registry.values())
        assert self.pool.num_free == 0
        with pytest.raises(NoFreeBlocks):
            self.pool.allocate(1)

    @rule()
    def reset(self):
        held = self.held()
        expect = sum(1 for bid in self.registry.values() if bid not in held)
        assert self.pool.reset_prefix_cache() == expect
        for chain, bid in list(self.registry.items()):
            if bid not in held:
                del self.registry[chain]
                self.evicted_chains.add(chain)

    @rule(chain=CHAINS)
    def query(self, chain):
        hits = self.pool.match_prefix(hashes_of(chain), [tuple(t) for t in chain])
        assert [b.block_id for b in hits] == self.expected_match(chain)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def pool_is_consistent(self):
        self.pool.check_invariants()

    @invariant()
    def ref_counts_equal_holders(self):
        held = self.held()
        for b in self.pool.blocks:
            assert b.ref_count == held.get(b.block_id, 0), b

    @invariant()
    def cache_matches_registry(self):
        pool_view = {}
        for h, b in self.pool.cached.items():
            pool_view[h] = b.block_id
        model_view = {hashes_of(chain)[-1]: bid for chain, bid in self.registry.items()}
        assert pool_view == model_view

    @invariant()
    def live_sequences_own_their_blocks(self):
        for s in self.seqs:
            assert len({id(b) for b in s.blocks}) == len(s.blocks)
            if s.scratch:
                assert all(b.block_hash is None for b in s.blocks)
                continue
            for j, b in enumerate(s.blocks[: len(s.blocks) - s.partial]):
                chain = tuple(s.tokens[: j + 1])
                assert self.registry.get(chain) == b.block_id        # never evicted while held
        assert not any(c in self.registry for c in self.evicted_chains)

    @invariant()
    def evictable_are_exactly_the_unheld_leaves(self):
        assert {b.block_id for b in self.pool.policy.blocks()} == self.evictable_leaves()
        assert len(self.pool.free_queue) + self.pool.num_cached_free + self.pool.num_in_use == self.NUM_BLOCKS

    @invariant()
    def leaf_first(self):
        # every registered chain's parent chain is registered: nothing was evicted under a child
        for chain in self.registry:
            if len(chain) > 1:
                assert chain[:-1] in self.registry


BlockPoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_block_pool_state_machine = BlockPoolMachine.TestCase


def test_access_recorder_sees_the_room_left_by_unfinished_blocks():
    from agentrt.bench.metrics import AccessRecorder
    pool = BlockPool(num_blocks=8, block_size=4)
    rec = AccessRecorder()
    pool.add_observer(rec)
    held = pool.allocate(3)                       # unfinished KV: not hashed, not cacheable
    a = pool.allocate(1)[0]
    pool.cache_full_block(a, None, (1, 2, 3, 4))
    pool.note_use([a], None)
    assert rec.access_log == [a.block_hash]
    assert rec.access_room == [8 - 3]             # the 3 unhashed held blocks are out of the cache's reach
    pool.free(held)
    pool.note_use([a], None)
    assert rec.access_room == [5, 8]
    assert rec.release_log == []                  # unhashed blocks' releases are not the cache's
    pool.free([a])
    assert rec.release_log == [(2, a.block_hash)]   # a holder let go after the 2 logged uses
    pool.remove_observer(rec)
    pool.note_use([a], None)
    assert rec.access_log == [a.block_hash] * 2 and pool.observers == ()


def test_observers_hear_evictions_recomputes_swaps_and_loads():
    from agentrt.engine.observe import EngineObserver

    class Log(EngineObserver):
        def __init__(self):
            self.seen = []

        def on_evict(self, block):
            self.seen.append(("evict", block.token_ids))

        def on_recompute(self, block_hash):
            self.seen.append(("recompute", block_hash))

        def on_swap_out(self, block, stored):
            self.seen.append(("swap_out", block.token_ids, stored))

        def on_load(self, n, prefetched):
            self.seen.append(("load", n, prefetched))

    pool = BlockPool(1, 2, host=HostTier(4))
    log = Log()
    pool.add_observer(log)
    [b] = pool.allocate(1)
    h = pool.cache_full_block(b, None, (1, 1)).block_hash
    pool.free([b])
    [b2] = pool.allocate(1)                       # evicts (1, 1) to the host tier
    assert log.seen == [("evict", (1, 1)), ("swap_out", (1, 1), True)]
    pool.free([b2])
    loaded = pool.load_from_host([h], [(1, 1)], None)
    assert len(loaded) == 1 and log.seen[-1] == ("load", 1, False)
    pool.free(loaded)
    pool.take_moves()
    pool.reset_prefix_cache()
    [b3] = pool.allocate(1)
    pool.cache_full_block(b3, None, (1, 1))       # computed a second time
    assert log.seen[-1] == ("recompute", h)
    pool.free([b3])
