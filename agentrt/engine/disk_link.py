"""The pool's side of the disk tier: which blocks go to disk, and disk hits waiting to be copied.

Writes are snapshots taken at the one moment the KV is known good, on the engine thread, then
written by the tier's worker thread:
- `write_all` (default): a block is written once, when it is first computed and cached
  (`on_computed`), so whatever a process computed is there for the next one;
- otherwise only blocks that leave memory: evicted from the device with no host tier
  (`on_dropped`), or evicted from the host tier (`on_host_evicted`).

Salted blocks (a request's `cache_salt`: `block.root` set) are never written, and salted
requests never read (the scheduler skips the disk for them): the directory is shared by processes
and outlives them, and its keys are a chain over the model and the tokens alone, so a salted block
on disk would be served to anyone who sends the same tokens. Tenants keep device and host reuse.

A disk hit (`BlockPool.load_from_disk`) reads and verifies the file at schedule time, so only
whole, checksummed blocks are ever registered; its payload waits in `pending_in` until the
engine copies it into the device block, after the step's swap-outs and before its compute. A
block that leaves the device cache before that copy is cancelled (`cancel_load`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from agentrt.engine.disk_tier import DiskTier, namespace_key


class DiskLink:
    def __init__(self, tier: DiskTier):
        self.tier = tier
        self.read_block: Callable[[int], Tensor] | None = None     # device block id -> KV snapshot (runner)
        self.read_slot: Callable[[int], Tensor] | None = None      # host slot -> KV snapshot (runner)
        self.pending_in: dict[int, Tensor] = {}                    # device block id -> payload to copy in
        self.stats_loaded = 0

    @property
    def write_all(self) -> bool:
        return self.tier.write_all

    def key(self, block) -> bytes:
        """Disk key of a cached device block (its parents' keys first, memoized)."""
        chain = []
        while block is not None and block.block_hash not in self.tier._keys:
            chain.append(block)
            block = block.parent
        key = self.tier._keys[block.block_hash] if block is not None else None
        for b in reversed(chain):
            key = self.tier.key_of(b.block_hash, key, b.token_ids)
        return key

    def parent_key(self, block) -> bytes:
        return self.key(block.parent) if block.parent is not None else self.tier.namespace

    # ---------------------------------------------------------------- writes
    def on_computed(self, block) -> None:
        if block.root is not None:                 # salted: never on disk
            return
        key = self.key(block)
        if self.write_all and self.read_block is not None and not self.tier.contains(key, len(block.token_ids)):
            self.tier.write_async(key, self.parent_key(block), block.token_ids, self.read_block(block.block_id))

    def on_dropped(self, block) -> None:
        if self.write_all or self.read_block is None or block.root is not None:
            return
        key = self.key(block)
        if not self.tier.contains(key, len(block.token_ids)):
            self.tier.write_async(key, self.parent_key(block), block.token_ids, self.read_block(block.block_id))

    def on_host_evicted(self, entry) -> None:
        if self.write_all or self.read_slot is None or entry.root is not None:
            return
        key = self.tier._keys.get(entry.block_hash)
        parent = self.tier._keys.get(entry.parent_hash) if entry.parent_hash is not None else self.tier.namespace
        if key is not None and parent is not None and not self.tier.contains(key, len(entry.token_ids)):
            self.tier.write_async(key, parent, entry.token_ids, self.read_slot(entry.slot))

    # ---------------------------------------------------------------- loads
    def match(self, hashes, tokens, start: int, limit: int) -> list[Tensor]:
        """Verified payloads of blocks start.. of the chain found on disk (at most `limit`)."""
        if limit <= 0 or start >= len(hashes):
            return []
        return self.tier.match(self.tier.keys_for(hashes, tokens), tokens, start, limit)

    def cancel_load(self, block_id: int) -> bool:
        return self.pending_in.pop(block_id, None) is not None

    def take_loads(self) -> dict[int, Tensor]:
        loads, self.pending_in = self.pending_in, {}
        return loads


def model_fingerprint(loaded, seed: int) -> str:
    """What identifies the weights: the GGUF's size and first MiB, the safetensors' sizes and
    mtimes, or the tiny model's seed and config."""
    if loaded.gguf is not None:
        path = Path(loaded.gguf)
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        return f"gguf:{path.name}:{path.stat().st_size}:{head}"
    if loaded.name == "tiny-random-llama":
        return f"tiny:{seed}"
    src = Path(loaded.source)
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else []
    return "hf:" + ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def make_disk_link(root: str | Path, loaded, seed: int, dtype, weights: str, block_size: int,
                   payload_shape: tuple[int, ...], capacity: int, write_all: bool) -> DiskLink:
    config = loaded.config.to_json_string(use_diff=False) if hasattr(loaded.config, "to_json_string") else ""
    ns = namespace_key("agentrt-kv", 1, loaded.name, model_fingerprint(loaded, seed),
                       hashlib.sha256(config.encode()).hexdigest(), dtype, weights, block_size, payload_shape)
    return DiskLink(DiskTier(root, ns, capacity, payload_shape, dtype, write_all))
