"""The block pool's bookkeeping invariants, checked by the tests after every kind of workload."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrt.engine.block_pool import BlockPool


def check_pool(pool: BlockPool) -> None:
    """Raise AssertionError if the pool's (and host tier's) bookkeeping is inconsistent."""
    free_ids, node = [], pool.free_queue.head
    while node is not None:
        free_ids.append(node.block_id)
        node = node.next
    free_set = set(free_ids)
    assert len(free_ids) == len(pool.free_queue) == len(free_set)
    evictable = {b.block_id for b in pool.policy.blocks()}
    for block in pool.blocks:
        assert block.ref_count >= 0, block
        in_free = block.block_id in free_set
        assert in_free == (block.ref_count == 0 and block.block_hash is None), block
        is_leaf_free = block.ref_count == 0 and block.block_hash is not None and block.num_cached_children == 0
        assert (block.block_id in evictable) == is_leaf_free, block
        if block.block_hash is not None:
            assert pool.cached[block.block_hash] is block
            if block.parent is not None:
                assert block.parent.block_hash is not None
                assert block.parent.ref_count >= block.ref_count, (block.parent, block)
                assert block.root == block.parent.root, ("a chain mixes salt roots", block.parent, block)
        children = sum(1 for b in pool.cached.values() if b.parent is block)
        assert children == block.num_cached_children, (block, children)
    cached_free = sum(1 for b in pool.cached.values() if b.ref_count == 0)
    assert cached_free == pool.num_cached_free, (cached_free, pool.num_cached_free)
    in_use = sum(1 for b in pool.blocks if b.ref_count > 0)
    assert in_use == pool.num_in_use and len(free_ids) + cached_free + in_use == pool.num_blocks
    if pool.host is not None:
        host = pool.host
        assert len({b for b, _ in host.pending_out}) == len(host.pending_out)
        assert all(host.entries.get(e.block_hash) is e for _, e in host.pending_out)
        assert all(pool.blocks[b].block_hash == e.block_hash and host.entries.get(e.block_hash) is e
                   for b, e in host.pending_in.items()), "a pending load lost its block or entry"
        host.check_invariants(len(host.pending_out) + len(host.pending_in) + pool.prefetch_pins)
