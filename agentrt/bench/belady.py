"""Bélády's MIN on a recorded block-access trace: the least recompute any eviction policy reaches.

The trace is the engine's sequence of full-block reads, in order: a request's prefill reads its
prompt's blocks one after another; a resident block is a hit, any other is a miss that recomputes
the block's tokens and makes it resident (evicting one block when the device is full).

Model: per-block demand paging with `capacity_blocks` slots. MIN (on a miss with a full cache
evict the resident block whose next use is furthest away, never-used-again first) gives the least
number of misses over *all* eviction policies on this access order. `rooms`, when given, lowers
the capacity access by access: the engine's cache can only use the blocks that running requests
do not hold as unfinished (not yet hashed) KV, so `rooms[i]` is that room when access i happened.
A shrinking room costs MIN the furthest-used blocks first, which is still optimal, and MIN may
put an eviction off until its next miss (the room is applied on misses), which only helps it.
`releases`, when given, makes each access hold its block until the matching release (a running
request's blocks cannot be evicted); MIN then picks among unheld blocks, still furthest first.
The engine's extra constraints only add misses, so MIN stays a lower bound for it:
  * hash-chain cache: a child block hits only while its parent is resident (the engine evicts
    leaves only); MIN ignores the chain and may keep a child without its parent;
  * a request's blocks are needed together;
  * pinning (`Access.pinned_until`) only restricts eviction; it is recorded but ignored here.
Caveats:
  * the bound holds for this access order; a policy that reorders requests produces another trace;
  * `recomputed_tokens` is minimal when all blocks carry the same token count (full blocks of one
    block size). With unequal counts it is MIN's total, which a size-aware policy may beat.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import NamedTuple


class Access(NamedTuple):
    """One block read. `key` identifies the block's content (e.g. its chain hash)."""

    key: Hashable
    tokens: int = 16
    pinned_until: int | None = None  # trace index; recorded, not used by the bound


class BeladyResult(NamedTuple):
    misses: int
    hits: int
    recomputed_tokens: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        total = self.misses + self.hits
        return self.hits / total if total else 0.0


def _normalize(accesses: Sequence[Access | Hashable]) -> list[Access]:
    """Accesses as `Access`; anything that is not an `Access` is a bare key (16 tokens)."""
    out = [a if isinstance(a, Access) else Access(a) for a in accesses]
    for a in out:
        if a.tokens < 0:
            raise ValueError(f"tokens must be >= 0: {a!r}")
    return out


def _check_capacity(capacity_blocks: int) -> None:
    if capacity_blocks < 0:
        raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")


def next_uses(keys: Sequence[Hashable]) -> list[int]:
    """For each position, the index of the key's next access, or len(keys) if none (one backward pass)."""
    n = len(keys)
    nxt = [n] * n
    seen: dict[Hashable, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = seen.get(keys[i], n)
        seen[keys[i]] = i
    return nxt


def belady(accesses: Sequence[Access | Hashable], capacity_blocks: int,
           rooms: Sequence[int] | None = None,
           releases: Sequence[tuple[int, Hashable]] | None = None) -> BeladyResult:
    """Misses, hits, recomputed tokens and evictions under Bélády's MIN, in O(n log n) (plus the
    held blocks skipped on the way to a victim).

    Compulsory (first-access) misses are counted. Capacity 0 means no cache: every access misses.
    `rooms[i]` (optional) caps the capacity at access i. `releases` (optional) makes every access
    a hold: the block cannot be evicted until its release, given as (number of accesses before
    it, key) in order; a cache full of held blocks overflows rather than evict one.
    """
    _check_capacity(capacity_blocks)
    trace = _normalize(accesses)
    if rooms is not None and len(rooms) != len(trace):
        raise ValueError(f"rooms has {len(rooms)} entries for {len(trace)} accesses")
    nxt = next_uses([a.key for a in trace])
    resident: dict[Hashable, int] = {}  # key -> index of its next use
    heap: list[tuple[int, int, Hashable]] = []  # (-next use, trace index, key); stale entries skipped
    holds: dict[Hashable, int] = {}
    parked: dict[Hashable, tuple] = {}   # held blocks' entries, out of the heap until their release
    pending = iter(releases or ())
    release = next(pending, None)
    misses = hits = tokens = evictions = 0
    for i, access in enumerate(trace):
        capacity = capacity_blocks if rooms is None else min(capacity_blocks, rooms[i])
        while release is not None and release[0] <= i:
            k = release[1]
            holds[k] = max(holds.get(k, 0) - 1, 0)   # (a prefetch's release: no access)
            if not holds[k] and k in parked:          # evictable again: back into the heap
                heapq.heappush(heap, parked.pop(k))
            release = next(pending, None)
        key = access.key
        if key in resident:
            hits += 1
        else:
            misses += 1
            tokens += access.tokens
            evictions += _evict_furthest(resident, heap, holds, parked, max(capacity - 1, 0))
        if releases is not None:
            holds[key] = holds.get(key, 0) + 1
        if key in resident or capacity > 0:
            resident[key] = nxt[i]
            heapq.heappush(heap, (-nxt[i], i, key))
    return BeladyResult(misses, hits, tokens, evictions)


def _evict_furthest(resident: dict, heap: list, holds: dict, parked: dict, keep: int) -> int:
    """Evict unheld residents, furthest next use first, until `keep` remain (or only held ones).
    A held block's entry is parked until its release (so it is not popped at every miss)."""
    evicted = 0
    while len(resident) > keep and heap:
        entry = heapq.heappop(heap)
        victim = entry[2]
        if resident.get(victim) != -entry[0]:
            continue                                  # stale: used again since
        if holds.get(victim, 0) > 0:
            parked[victim] = entry
            continue
        del resident[victim]
        evicted += 1
    return evicted


def simulate_lru(accesses: Sequence[Access | Hashable], capacity_blocks: int) -> BeladyResult:
    """The same trace under least-recently-used eviction, for comparison."""
    _check_capacity(capacity_blocks)
    lru: OrderedDict[Hashable, None] = OrderedDict()
    misses = hits = tokens = evictions = 0
    for access in _normalize(accesses):
        if access.key in lru:
            hits += 1
            lru.move_to_end(access.key)
            continue
        misses += 1
        tokens += access.tokens
        if capacity_blocks == 0:
            continue
        if len(lru) >= capacity_blocks:
            lru.popitem(last=False)
            evictions += 1
        lru[access.key] = None
    return BeladyResult(misses, hits, tokens, evictions)
