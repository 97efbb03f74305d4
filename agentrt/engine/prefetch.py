"""Prefetch: bring a prefix's host-tier blocks back into device blocks ahead of need.

The engine thread plans (which host entries, which device blocks) under the pool's control; a
worker thread only copies. Until the copy is done the device blocks are held by the plan and are
not in the prefix cache, so nothing reads or evicts them; the host entries are pinned so no
swap-out reuses their slots; the device-cached blocks under the chain (the parent and all its
ancestors, as a request would hold them) are held so the chain stays whole (the parent alone
is not enough: its unheld ancestors would count as reclaimable in `num_free`, yet none of them
can become an evictable leaf while the parent is held). At the next step the engine registers
finished plans: the blocks join the prefix cache as unreferenced (evictable) blocks, exactly as
if a request had computed and left them.

Demand loads never wait for the worker: they run on the engine thread before the step's
compute. A request that needs a block still in flight loads its own copy; the prefetched one is
then dropped when its plan is registered.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Sequence

from agentrt.engine.backend import Runner
from agentrt.engine.block_pool import Block, BlockPool, chain_hash
from agentrt.engine.host_tier import HostEntry


class PrefetchPlan:
    __slots__ = ("prefix", "blocks", "entries", "done", "error")

    def __init__(self, prefix: list[Block], blocks: list[Block], entries: list[HostEntry]):
        self.prefix = prefix                      # the device-cached chain under the blocks, held
        self.blocks = blocks
        self.entries = entries
        self.done = threading.Event()
        self.error: BaseException | None = None

    @property
    def parent(self) -> Block | None:
        return self.prefix[-1] if self.prefix else None

    def hashes(self) -> list[int]:
        return [e.block_hash for e in self.entries]


def plan_prefetch(pool: BlockPool, hashes: Sequence[int], tokens: Sequence[tuple[int, ...]], *,
                  evict: bool = False, busy: Collection[int] = ()) -> PrefetchPlan | None:
    """Reserve device blocks for the host run that follows the device-cached part of a chain.
    Takes only free blocks unless `evict` (then cached leaves go, swapped out as usual). Stops at a
    hash in `busy` (already on its way)."""
    host = pool.host
    if host is None:
        return None
    prefix: list[Block] = []
    while len(prefix) < len(hashes) and (b := pool.cached.get(hashes[len(prefix)])) is not None \
            and b.token_ids == tokens[len(prefix)]:
        prefix.append(b)
    k = len(prefix)
    room = len(pool.free_queue)
    if evict:                                     # the prefix will be held: its unheld blocks are no room
        room = pool.num_free - sum(1 for b in prefix if b.ref_count == 0)
    entries = host.match(hashes[k:], tokens[k:], hashes[k - 1] if k else None, room)
    for i, entry in enumerate(entries):
        if entry.block_hash in busy:
            entries = entries[:i]
            break
    if not entries:
        return None
    pool.touch(prefix)                            # all of it, as a request holds its whole chain
    for entry in entries:
        host.pin(entry, pool.clock)
    pool.prefetch_pins += len(entries)
    return PrefetchPlan(prefix, pool.allocate(len(entries)), entries)


def finish_prefetch(pool: BlockPool, plan: PrefetchPlan) -> int:
    """Register a finished plan's blocks in the prefix cache (unreferenced) and release what it
    held; returns how many blocks joined the cache (none when the copy failed)."""
    parent, cut, registered = plan.parent, plan.error is not None, 0
    for block, entry in zip(plan.blocks, plan.entries):
        if not cut:
            got = pool.register_loaded(block, parent, entry)
            registered += got is block
            cut, parent = got is None, got
        pool.host.unpin(entry)
    pool.prefetch_pins -= len(plan.entries)
    pool.note_loaded(registered, prefetched=True)
    pool.free(plan.prefix + plan.blocks)
    return registered


class PrefetchWorker:
    """Runs plans' host -> device copies in order on a thread of its own, which exits when idle
    (so an engine that is dropped leaves no thread behind)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        # a runner whose copies take no time (the simulator) has them done where they are asked for:
        # on a thread, whether one landed before the next step would depend on the thread's speed
        self.inline = getattr(runner, "prefetch_inline", False)
        self._plans: deque[PrefetchPlan] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, plan: PrefetchPlan) -> None:
        with self._lock:
            self._plans.append(plan)
            start, self._running = not self._running, True
        if not start:
            return
        if self.inline:
            self._drain()
        else:
            threading.Thread(target=self._drain, name="agentrt-prefetch", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._plans:
                    self._running = False
                    return
                plan = self._plans.popleft()
            try:
                self.runner.prefetch_copy([b.block_id for b in plan.blocks], [e.block_id for e in plan.entries])
            except BaseException as exc:          # the plan is registered as failed, never as cached
                plan.error = exc
            plan.done.set()


class Prefetcher:
    """The engine's side of the tiers: runs each step's copies and the prefetches asked for."""

    def __init__(self, pool: BlockPool, runner: Runner):
        self.pool, self.runner = pool, runner
        self.worker = PrefetchWorker(runner)
        self.asked: deque[tuple[list[int], bool]] = deque()     # appended from any thread
        self.inflight: list[PrefetchPlan] = []

    def ask(self, token_ids: list[int], evict: bool) -> None:
        self.asked.append((token_ids, evict))

    def pending(self) -> bool:
        return bool(self.asked or self.inflight)

    def run_copies(self) -> int:
        """Plan the prefetches asked for, run the step's copies (swap-outs, then demand loads),
        then start the prefetch copies (after the swap-outs: a plan may reuse an evicted block).
        Returns the number of blocks newly on their way."""
        plans: list[PrefetchPlan] = []
        while self.asked:
            ids, evict = self.asked.popleft()
            busy = {h for p in self.inflight + plans for h in p.hashes()}
            plan = plan_prefetch(self.pool, *self.chain(ids), evict=evict, busy=busy)
            if plan is not None:
                plans.append(plan)
        moves = self.pool.take_moves()
        if moves:
            self.runner.apply_moves(moves)
        for plan in plans:
            self.worker.submit(plan)
        self.inflight += plans
        return sum(len(p.blocks) for p in plans)

    def register(self, wait: bool) -> int:
        """Register the plans whose copies are done (all of them, waiting, when `wait`)."""
        registered, left = 0, []
        for plan in self.inflight:
            if wait:
                plan.done.wait()
            if plan.done.is_set():
                registered += finish_prefetch(self.pool, plan)
            else:
                left.append(plan)
        self.inflight = left
        return registered

    def chain(self, ids: list[int]) -> tuple[list[int], list[tuple[int, ...]]]:
        bs, hashes, toks = self.pool.block_size, [], []
        for j in range(len(ids) // bs):
            toks.append(tuple(ids[j * bs:(j + 1) * bs]))
            hashes.append(chain_hash(hashes[-1] if hashes else None, toks[-1]))
        return hashes, toks
