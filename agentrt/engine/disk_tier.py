"""The disk KV tier: full blocks persisted under a directory that many processes share.

A block's file is named by its disk key, a SHA-256 chain over the namespace (model identity,
KV dtype, weight format, block size, KV shape) and every token of the prefix up to and including
the block: equal keys mean the same model computed the same whole prefix, so a block is never
served to another model or another prefix. Each file holds a header (magic, version, key,
parent key, the block's token ids, payload length, payload CRC-32) and the block's K and V over
all layers, as the runner keeps them.

- Reads verify everything (size, magic, key, tokens, checksum) before a byte is used; a corrupt,
  truncated or foreign file is deleted and reported as a miss, so the block is recomputed.
- Writes go to a private temporary file in the same directory and `os.replace` it over the
  final name: readers see a whole file or none, and two processes writing the same key write
  the same bytes. Writes run on a worker thread from a snapshot taken before the block can change.
- The directory is bounded: when the bytes written (plus what was there) pass the cap, the least
  recently used files (by modification time, bumped on every read hit) go first, down to 90%.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import struct
import threading
import weakref
import zlib
from collections import deque
from pathlib import Path

import torch
from torch import Tensor

MAGIC = b"AKVB"
VERSION = 1
_HEAD = struct.Struct("<4sHH32s32sQI")        # magic, version, n_tokens, key, parent key, payload bytes, crc32
SUFFIX = ".kvb"
LOW_WATER = 0.9


def namespace_key(*parts: object) -> bytes:
    """The root of every disk key: what must match for a block to be reused."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def chain_key(parent: bytes, token_ids: tuple[int, ...]) -> bytes:
    return hashlib.sha256(parent + struct.pack(f"<{len(token_ids)}i", *token_ids)).digest()


class DiskTier:
    """Files of blocks under `root`; `payload_shape`/`dtype` describe one block's KV."""

    def __init__(self, root: str | Path, namespace: bytes, capacity_bytes: int, payload_shape: tuple[int, ...],
                 dtype: torch.dtype, write_all: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.capacity = capacity_bytes
        self.shape, self.dtype = tuple(payload_shape), dtype
        self.payload_bytes = int(torch.Size(payload_shape).numel()) * dtype.itemsize
        self.write_all = write_all             # every computed full block, not only those leaving memory
        self._keys: dict[int, bytes] = {}       # pool chain hash -> disk key (memo)
        self._used = sum(f.stat().st_size for f in self._files())
        self._lock = threading.Lock()
        self._queue: deque[tuple[bytes, bytes, tuple[int, ...], Tensor]] = deque()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        atexit.register(_flush_at_exit, weakref.ref(self))   # queued writes are not lost at a normal exit
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "written": 0, "evicted": 0, "write_errors": 0}

    # ---------------------------------------------------------------- keys
    def key_of(self, block_hash: int, parent_key: bytes | None, token_ids: tuple[int, ...]) -> bytes:
        key = self._keys.get(block_hash)
        if key is None:
            key = chain_key(self.namespace if parent_key is None else parent_key, token_ids)
            if len(self._keys) > 1 << 20:
                self._keys.clear()
            self._keys[block_hash] = key
        return key

    def keys_for(self, hashes, tokens) -> list[bytes]:
        """Disk keys of a chain of blocks from the root (memoized by pool hash)."""
        keys: list[bytes] = []
        for h, toks in zip(hashes, tokens):
            keys.append(self.key_of(h, keys[-1] if keys else None, toks))
        return keys

    def path(self, key: bytes) -> Path:
        hexkey = key.hex()
        return self.root / hexkey[:2] / (hexkey + SUFFIX)

    # ---------------------------------------------------------------- reads
    def read(self, key: bytes, parent_key: bytes, token_ids: tuple[int, ...]) -> Tensor | None:
        """The block's KV if its file is there and whole; a bad file is deleted (None)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.stats["misses"] += 1
            return None
        payload = self._verify(data, key, parent_key, token_ids)
        if payload is None:
            self.stats["corrupt"] += 1
            _unlink(path)
            return None
        self.stats["hits"] += 1
        try:
            os.utime(path)                   # LRU on disk: a hit is a use
        except OSError:
            pass
        return torch.frombuffer(bytearray(payload), dtype=self.dtype).view(self.shape)

    def _verify(self, data: bytes, key: bytes, parent_key: bytes, token_ids: tuple[int, ...]) -> bytes | None:
        n = len(token_ids)
        head_len = _HEAD.size + 4 * n
        if len(data) != head_len + self.payload_bytes:
            return None
        magic, version, n_tok, k, pk, size, crc = _HEAD.unpack_from(data)
        if (magic, version, n_tok, k, pk, size) != (MAGIC, VERSION, n, key, parent_key, self.payload_bytes):
            return None
        if struct.unpack_from(f"<{n}i", data, _HEAD.size) != tuple(token_ids):
            return None
        payload = memoryview(data)[head_len:]
        return payload if zlib.crc32(payload) == crc else None

    def match(self, keys: list[bytes], tokens, start: int, limit: int) -> list[Tensor]:
        """Payloads of the longest run of blocks keys[start:] on disk (at most `limit`)."""
        out: list[Tensor] = []
        for j in range(start, min(len(keys), start + limit)):
            parent = keys[j - 1] if j else self.namespace
            payload = self.read(keys[j], parent, tokens[j])
            if payload is None:
                break
            out.append(payload)
        return out

    # ---------------------------------------------------------------- writes
    def contains(self, key: bytes, n_tokens: int) -> bool:
        """A whole-sized file is there (a truncated one is rewritten; a corrupt one is caught on read)."""
        try:
            return self.path(key).stat().st_size == _HEAD.size + 4 * n_tokens + self.payload_bytes
        except OSError:
            return False

    def write_async(self, key: bytes, parent_key: bytes, token_ids: tuple[int, ...], payload: Tensor) -> None:
        """Queue a write of a snapshot (the caller's copy: nothing else may change it)."""
        with self._lock:
            self._queue.append((key, parent_key, token_ids, payload))
            self._idle.clear()
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="agentrt-disk-kv", daemon=True)
                self._writer.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is on disk; False on timeout."""
        return self._idle.wait(timeout)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._writer = None
                    self._idle.set()
                    return
                item = self._queue.popleft()
            try:
                self.write(*item)
            except OSError:
                self.stats["write_errors"] += 1

    def write(self, key: bytes, parent_key: bytes, token_ids: tuple[int, ...], payload: Tensor) -> None:
        final = self.path(key)
        if self.contains(key, len(token_ids)):
            return
        raw = payload.contiguous().view(torch.uint8).numpy().tobytes()
        head = _HEAD.pack(MAGIC, VERSION, len(token_ids), key, parent_key, len(raw), zlib.crc32(raw))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(head + struct.pack(f"<{len(token_ids)}i", *token_ids) + raw)
        os.replace(tmp, final)               # atomic: readers see the old state or the whole file
        self.stats["written"] += 1
        self._used += len(head) + 4 * len(token_ids) + len(raw)
        if self._used > self.capacity:
            self.evict_to(int(self.capacity * LOW_WATER))

    # ---------------------------------------------------------------- capacity
    def _files(self):
        return (p for p in self.root.glob(f"*/*{SUFFIX}") if not p.name.startswith("."))

    def evict_to(self, target_bytes: int) -> int:
        """Delete least recently used files until the directory holds at most `target_bytes`."""
        files = []
        for p in self._files():
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        files.sort()
        used = sum(size for _, size, _ in files)
        removed = 0
        for _, size, p in files:
            if used <= target_bytes:
                break
            if _unlink(p):
                removed += 1
            used -= size
        self._used = used
        self.stats["evicted"] += removed
        return removed

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files())


def _flush_at_exit(ref) -> None:
    tier = ref()
    if tier is not None:
        tier.flush(60)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError:
        return False
