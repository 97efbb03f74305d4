"""Block hashes of a request's tokens, computed once per conversation rather than once per turn.

An agent's next prompt extends its previous one, so the hash chain of the previous prompt
(kept per (program, agent) reader, the most recent `MAX_READERS_KEPT`) serves every block the
two share; only the blocks after the shared part are hashed. Tokens are compared as whole list
slices (in C), so the reuse costs nothing like hashing tens of thousands of tokens again.
`BlockTokens` hands the prefix matcher each block's tokens only as far as it reads them.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from agentrt.engine.blocks import chain_hash
from agentrt.engine.request import Request

MAX_READERS_KEPT = 4096


class BlockTokens(Sequence):
    """The token tuples of a request's first `n` full blocks, built on access."""
    __slots__ = ("req", "bs", "n")

    def __init__(self, req: Request, block_size: int, n: int):
        self.req, self.bs, self.n = req, block_size, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self.n))]
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError(j)
        return tuple(self.req.tokens(j * self.bs, (j + 1) * self.bs))


class PrefixHashes:
    def __init__(self, block_size: int):
        self.bs = block_size
        self._last: OrderedDict[tuple, tuple[list[int], list[int], int | None]] = OrderedDict()

    def extend(self, req: Request, reader: tuple | None) -> None:
        """Hash every full block of `req` not hashed yet (reusing its reader's last chain)."""
        bs, hashes = self.bs, req.block_hashes
        if not hashes and reader is not None and reader in self._last:
            hashes.extend(self._shared(req, *self._last[reader]))
        for j in range(len(hashes), req.num_tokens // bs):
            hashes.append(chain_hash(hashes[-1] if hashes else req.cache_root, tuple(req.tokens(j * bs, (j + 1) * bs))))

    def remember(self, req: Request, reader: tuple | None) -> None:
        """Keep `req`'s prompt chain for its reader's next request."""
        if reader is None:
            return
        n = min(len(req.block_hashes), len(req.prompt_token_ids) // self.bs)
        self._last[reader] = (req.prompt_token_ids, req.block_hashes[:n], req.cache_root)
        self._last.move_to_end(reader)
        if len(self._last) > MAX_READERS_KEPT:
            self._last.popitem(last=False)

    def forget_program(self, program_id: str) -> None:
        for reader in [r for r in self._last if r[0] == program_id]:
            del self._last[reader]

    def _shared(self, req: Request, tokens: list[int], hashes: list[int], root: int | None) -> list[int]:
        """The leading hashes of an earlier chain whose blocks `req` starts with."""
        if root != req.cache_root:
            return []
        prompt, bs = req.prompt_token_ids, self.bs
        lo, hi = 0, min(len(hashes), len(prompt) // bs)          # blocks known equal / to try
        if prompt[:hi * bs] == tokens[:hi * bs]:
            return hashes[:hi]
        while lo < hi:                                            # the longest equal run of blocks
            mid = (lo + hi + 1) // 2
            if prompt[:mid * bs] == tokens[:mid * bs]:
                lo = mid
            else:
                hi = mid - 1
        return hashes[:lo]
