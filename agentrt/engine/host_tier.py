"""The host KV tier: block slots in CPU memory below the device pool, keyed by chain hash.

The device pool swaps an evicted cached leaf out into a host slot instead of dropping it, and
loads host blocks back (on demand or ahead, by prefetch). This class is the bookkeeping only:
which hash sits in which slot, and the copies still to do. The KV tensors and the copies
themselves live in the runner (`kv_transfer`).

Entries are keyed by hash and keep their token ids, parent hash and chain root (a cache salt's,
or None), so a lookup can rule out collisions and check that the entry continues the caller's
chain under the caller's salt. Host entries form a forest
too (by parent hash); when the host is full its least recently used unpinned leaf goes first.
An entry is pinned while a copy that reads or writes its slot is pending, so its slot is never
reused under that copy.
"""
from __future__ import annotations

from typing import NamedTuple

from agentrt.engine.eviction import LRUPolicy


class HostEntry:
    __slots__ = ("block_id", "block_hash", "token_ids", "parent_hash", "root", "last_access", "readers", "pins")

    def __init__(self, slot: int, block_hash: int, token_ids: tuple[int, ...], parent_hash: int | None,
                 readers: dict, clock: int, root: int | None = None):
        self.block_id = slot            # named so LRUPolicy can rank entries like device blocks
        self.block_hash = block_hash
        self.token_ids = token_ids
        self.parent_hash = parent_hash
        self.root = root                # the chain's salt root (None: unsalted)
        self.last_access = clock
        self.readers = readers
        self.pins = 0

    @property
    def slot(self) -> int:
        return self.block_id

    def __repr__(self) -> str:
        return f"HostEntry(slot={self.block_id}, hash={self.block_hash}, pins={self.pins})"


class Moves(NamedTuple):
    """One batch of copies: device blocks -> host slots first, then host slots -> device blocks."""
    out_blocks: list[int]
    out_slots: list[int]
    in_slots: list[int]
    in_blocks: list[int]

    def __bool__(self) -> bool:
        return bool(self.out_blocks or self.in_blocks)


class HostTier:
    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError("a host tier needs at least one slot")
        self.num_slots = num_slots
        self.entries: dict[int, HostEntry] = {}
        self.free_slots = list(range(num_slots - 1, -1, -1))     # pop() hands out slot 0 first
        self.num_children: dict[int, int] = {}                    # parent hash -> host entries under it
        self.leaves = LRUPolicy()                                 # evictable: unpinned, no host children
        self.pending_out: list[tuple[int, HostEntry]] = []        # (device block id, entry to fill)
        self.pending_in: dict[int, HostEntry] = {}                # device block id -> entry to read
        self.stats_evicted = 0
        self.on_evict = None                                      # called with each entry full-host evicts (disk tier)

    def __len__(self) -> int:
        return len(self.entries)

    # ---------------------------------------------------------------- lookups
    def lookup(self, block_hash: int, parent_hash: int | None, token_ids: tuple[int, ...],
               root: int | None = None) -> HostEntry | None:
        entry = self.entries.get(block_hash)
        if entry is None or entry.token_ids != token_ids or entry.parent_hash != parent_hash or entry.root != root:
            return None
        return entry

    def match(self, hashes, tokens, parent_hash: int | None, limit: int, root: int | None = None) -> list[HostEntry]:
        """Longest run (at most `limit`) of host entries continuing a chain after `parent_hash`,
        under the chain root `root`."""
        out: list[HostEntry] = []
        for h, toks in zip(hashes[:limit], tokens):
            entry = self.lookup(h, parent_hash, toks, root)
            if entry is None:
                break
            out.append(entry)
            parent_hash = h
        return out

    # ---------------------------------------------------------------- pins
    def pin(self, entry: HostEntry, clock: int) -> None:
        if entry.pins == 0 and self._is_leaf(entry):
            self.leaves.remove(entry)
        entry.pins += 1
        entry.last_access = max(entry.last_access, clock)

    def unpin(self, entry: HostEntry) -> None:
        entry.pins -= 1
        if entry.pins == 0 and self._is_leaf(entry):
            self.leaves.add(entry)

    def _is_leaf(self, entry: HostEntry) -> bool:
        return self.num_children.get(entry.block_hash, 0) == 0

    # ---------------------------------------------------------------- swap-out
    def put(self, block_id: int, block_hash: int, parent_hash: int | None, token_ids: tuple[int, ...],
            readers: dict, clock: int, root: int | None = None) -> HostEntry | None:
        """A new entry for device block `block_id`'s KV, its copy pending (and the entry pinned) until
        `take_moves`; None when the hash is already here (nothing to copy), on a hash collision, or
        when every entry is pinned or has children."""
        old = self.entries.get(block_hash)
        if old is not None:
            if old.pins == 0 and old.token_ids == token_ids and old.root == root and self._is_leaf(old):
                self.leaves.remove(old)        # re-add at the new access time
                old.last_access = clock
                self.leaves.add(old)
            return None
        if not self.free_slots:
            if not len(self.leaves):
                return None
            victim = self.leaves.pop()
            if self.on_evict is not None:
                self.on_evict(victim)
            self._evict(victim)
        entry = HostEntry(self.free_slots.pop(), block_hash, token_ids, parent_hash, dict(readers), clock, root)
        self.entries[block_hash] = entry
        parent = self.entries.get(parent_hash) if parent_hash is not None else None
        if parent is not None and parent.pins == 0 and self._is_leaf(parent):
            self.leaves.remove(parent)
        if parent_hash is not None:
            self.num_children[parent_hash] = self.num_children.get(parent_hash, 0) + 1
        entry.pins = 1
        self.pending_out.append((block_id, entry))
        return entry

    def _evict(self, entry: HostEntry) -> None:
        """Drop an entry the leaf LRU already gave up."""
        del self.entries[entry.block_hash]
        self.free_slots.append(entry.block_id)
        self.stats_evicted += 1
        ph = entry.parent_hash
        if ph is None:
            return
        left = self.num_children[ph] - 1
        if left:
            self.num_children[ph] = left
            return
        del self.num_children[ph]
        parent = self.entries.get(ph)
        if parent is not None and parent.pins == 0:
            self.leaves.add(parent)

    def clear(self) -> int:
        """Drop entries leaf-first until only pinned ones (and their ancestors) are left; returns how many."""
        dropped = 0
        while len(self.leaves):
            self._evict(self.leaves.pop())
            dropped += 1
        return dropped

    # ---------------------------------------------------------------- pending copies
    def take_moves(self) -> Moves:
        """The copies recorded since the last call, unpinning their entries: run them before the
        pool hands out another block."""
        out, ins = self.pending_out, self.pending_in
        self.pending_out, self.pending_in = [], {}
        for _, entry in out:
            self.unpin(entry)
        for entry in ins.values():
            self.unpin(entry)
        return Moves([b for b, _ in out], [e.block_id for _, e in out],
                     [e.block_id for e in ins.values()], list(ins))

    def cancel_load(self, block_id: int) -> None:
        """A block whose load is pending left the device cache before the copy ran."""
        entry = self.pending_in.pop(block_id, None)
        if entry is not None:
            self.unpin(entry)

    # ---------------------------------------------------------------- invariants
    def check_invariants(self, expected_pins: int) -> None:
        slots = [e.block_id for e in self.entries.values()]
        assert len(slots) == len(set(slots)) and not set(slots) & set(self.free_slots)
        assert len(self.free_slots) + len(self.entries) == self.num_slots, (len(self.free_slots), len(self.entries))
        assert all(0 <= s < self.num_slots for s in slots + self.free_slots)
        counts: dict[int, int] = {}
        for h, e in self.entries.items():
            assert e.block_hash == h and e.pins >= 0, e
            if e.parent_hash is not None:
                counts[e.parent_hash] = counts.get(e.parent_hash, 0) + 1
        assert counts == self.num_children, "host child counts are stale"
        leaves = {id(e) for e in self.leaves.blocks()}
        assert len(leaves) == len(self.leaves)
        for e in self.entries.values():
            assert (id(e) in leaves) == (e.pins == 0 and self._is_leaf(e)), e
        assert sum(e.pins for e in self.entries.values()) == expected_pins
