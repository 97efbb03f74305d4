"""KV blocks and the O(1) free queue they wait in."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash", "token_ids", "parent", "root",
                 "num_cached_children", "last_access", "readers", "prev", "next")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None
        self.parent: Block | None = None
        self.root: int | None = None          # its chain's salt root (`salt_root`); None: unsalted
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
    """Hash of a full block given its parent's hash: equal hashes mean equal whole prefixes. The
    first block's parent is its chain's root: None, or a salt root (`salt_root`)."""
    return hash((parent_hash, token_ids))


def salt_root(cache_salt: str) -> int:
    """The root of a salted hash chain: a cache salt's SHA-256, cut to 60 bits (below 2**61 - 1,
    so distinct roots hash apart in `chain_hash`). Blocks under different roots never share a
    hash, so a request sees only the cached blocks computed under its own salt; unsalted chains
    (root None) keep the hashes they always had."""
    digest = hashlib.sha256(b"agentrt-cache-salt\x1f" + cache_salt.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 4


MAX_READERS = 8          # most recent (program, agent) readers remembered per block
