"""Continuous batching under a per-step token budget, with chunked prefill and preemption.

Every step, running requests come first (in admission order), each asking for the tokens it
still has to compute (one for a decode, up to the rest of the budget for a prefill chunk); then
waiting requests are admitted while budget, sequence slots and blocks last. When blocks run out,
the newest running request is preempted: its blocks go back to the pool (full ones stay in the
prefix cache, so resuming often recomputes little) and it waits at the head of the queue.
With a host tier, a prefix match that misses on the device continues into the host tier: those
blocks are loaded back (copied before the step's compute) and count as cached, not computed.
A salted request's hash chain starts at its salt's root (`Request.cache_root`), so it matches
only blocks computed under the same salt, on the device and in the host tier; it never reads
from (nor writes to) the disk tier, whose files outlive the process and its tenants.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, replace
from typing import NamedTuple

from agentrt.engine.block_pool import BlockPool
from agentrt.engine.prefix_hashes import BlockTokens, PrefixHashes
from agentrt.engine.request import Request, RequestStatus


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_prefix_caching: bool = True
    order: str = "request"          # "request": FCFS by request; "program": FCFS by program arrival;
                                    # "las": least attained service by program, then program arrival


class ScheduledBatch(NamedTuple):
    requests: list[Request]      # decodes (one new token) first, then prefill chunks
    num_new_tokens: list[int]
    num_preempted: int

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)


def reader_of(req: Request) -> tuple | None:
    meta = req.meta
    return (meta.program_id, meta.agent_id) if meta.program_id is not None else None


def program_arrival(req: Request) -> float:
    """When the request's program arrived (as its front said), else the request itself."""
    arrival = req.meta.program_arrival
    return req.arrival_time if arrival is None else arrival


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool):
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.service: dict[str, int] = {}        # program -> tokens computed for it (least attained service)
        self.hashes = PrefixHashes(pool.block_size)   # block hash chains, reused turn to turn
        self._order_key = self._order_keys().get(config.order)

    def _order_keys(self):
        return {"program": program_arrival, "las": self.attained_service}

    def set_order(self, order: str) -> None:
        """Switch the queue / step-budget order ("request", "program" or "las")."""
        self.config = replace(self.config, order=order)
        self._order_key = self._order_keys().get(order)

    def attained_service(self, req: Request) -> tuple[int, float]:
        """Tokens computed so far for the request's program (its own, without a program), then arrival."""
        pid = req.meta.program_id
        served = self.service.get(pid, 0) if pid is not None else req.num_computed_tokens
        return served, program_arrival(req)

    def end_program(self, program_id: str) -> None:
        """Forget a program's attained service and hash chains (it has ended)."""
        self.service.pop(program_id, None)
        self.hashes.forget_program(program_id)

    def add(self, req: Request) -> None:
        """Queue a request: at the tail, or (program order) behind every request of an older or
        equally old program, so a program's next turn overtakes newer programs' first turns (least
        attained service: behind every program that has had as little engine time or less)."""
        order_key = self._order_key
        if order_key is None or not self.waiting:
            self.waiting.append(req)
            return
        key = order_key(req)
        i = len(self.waiting)
        while i > 0 and self.waiting[i - 1].num_preemptions == 0 and order_key(self.waiting[i - 1]) > key:
            i -= 1
        self.waiting.insert(i, req)

    def _reorder_by_service(self) -> None:
        """Least attained service: services grow every step, so both queues are re-sorted (stable;
        preempted requests stay at the head of the waiting queue)."""
        self.running.sort(key=self.attained_service)
        head = [r for r in self.waiting if r.num_preemptions]
        if len(head) < len(self.waiting):
            rest = sorted((r for r in self.waiting if not r.num_preemptions), key=self.attained_service)
            self.waiting = deque(head + rest)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---------------------------------------------------------------- one step
    def schedule(self) -> ScheduledBatch:
        self.pool.tick()
        if self.config.order == "las":
            self._reorder_by_service()
        budget = self.config.max_num_batched_tokens
        chosen: list[tuple[Request, int]] = []
        preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if self._allocate(req, n):
                chosen.append((req, n))
                budget -= n
                i += 1
                continue
            victim = self.running.pop()      # newest request yields its blocks
            self._preempt(victim)
            preempted += 1
            if victim is req:
                break
        inflight = self._inflight_hashes(chosen)
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            self._match_prefix(req)
            if self._waits_for_inflight(req, inflight):
                self._release(req)
                break
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._allocate(req, n):
                self._release(req)
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self._run(req)
            chosen.append((req, n))
            inflight |= self._inflight_hashes(chosen[-1:])
            budget -= n
        chosen.sort(key=lambda rn: rn[1] != 1)   # decodes first (stable)
        batch = ScheduledBatch([r for r, _ in chosen], [n for _, n in chosen], preempted)
        if self.pool.observers:
            in_use = self.pool.num_in_use
            for observer in self.pool.observers:
                observer.on_step(batch, in_use)
        return batch

    def _run(self, req: Request) -> None:
        """Join the running set: at the end, or (program order) after every request of an older
        or equally old program, so older programs' chunks get the step's token budget first and
        the newest program's request is the one preempted (least attained service: the most
        served program's)."""
        order_key = self._order_key
        if order_key is None:
            self.running.append(req)
        else:
            bisect.insort_right(self.running, req, key=order_key)

    def _match_prefix(self, req: Request) -> None:
        if req.block_table:
            return
        bs = self.pool.block_size
        if self.config.enable_prefix_caching:
            self._extend_hashes(req)
            max_blocks = (req.num_tokens - 1) // bs          # leave at least one token to compute
            toks = BlockTokens(req, bs, max_blocks)
            root = req.cache_root
            hits = self.pool.match_prefix(req.block_hashes[:max_blocks], toks, root)
            self.pool.touch(hits)
            if len(hits) < max_blocks and self.pool.host is not None:    # continue into the host tier
                k = len(hits)
                hits += self.pool.load_from_host(req.block_hashes[k:max_blocks], toks[k:], hits[-1] if hits else None,
                                                 root)
            if len(hits) < max_blocks and self.pool.disk is not None and root is None:   # then the disk tier
                hits += self.pool.load_from_disk(req.block_hashes[:max_blocks], toks, len(hits), hits[-1] if hits else None)
            self.pool.note_use(hits, reader_of(req))
            req.block_table = hits
        req.num_computed_tokens = len(req.block_table) * bs
        if req.num_preemptions == 0:
            req.num_cached_tokens = req.num_computed_tokens

    def _inflight_hashes(self, chosen: list[tuple[Request, int]]) -> set[int]:
        """Hashes of full blocks that this step's prefills are computing."""
        if not self.config.enable_prefix_caching:
            return set()
        bs, out = self.pool.block_size, set()
        for req, n in chosen:
            if n > 1:
                self._extend_hashes(req)
                out.update(req.block_hashes[req.num_computed_tokens // bs:(req.num_computed_tokens + n) // bs])
        return out

    def _waits_for_inflight(self, req: Request, inflight: set[int]) -> bool:
        """True when the request's next uncached block is being computed by another request now:
        admitting it next step turns that block into a cache hit instead of a second computation."""
        j = req.num_computed_tokens // self.pool.block_size
        return j < len(req.block_hashes) and req.block_hashes[j] in inflight

    def _extend_hashes(self, req: Request) -> None:
        self.hashes.extend(req, reader_of(req))

    def _allocate(self, req: Request, n: int) -> bool:
        bs = self.pool.block_size
        need = -(-(req.num_computed_tokens + n) // bs) - len(req.block_table)
        if need <= 0:
            return True
        if need > self.pool.num_free:
            return False
        req.block_table.extend(self.pool.allocate(need))
        return True

    def _release(self, req: Request) -> None:
        self.pool.free(req.block_table)
        req.block_table = []
        req.num_computed_tokens = 0

    def _preempt(self, req: Request) -> None:
        self._release(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.waiting.appendleft(req)

    # ---------------------------------------------------------------- after the step
    def commit(self, batch: ScheduledBatch) -> None:
        """Advance computed-token counts and register blocks that became full in the prefix cache."""
        bs = self.pool.block_size
        caching = self.config.enable_prefix_caching
        las = self.config.order == "las"
        for req, n in zip(batch.requests, batch.num_new_tokens):
            before = req.num_computed_tokens // bs
            req.num_computed_tokens += n
            if las and req.meta.program_id is not None:
                pid = req.meta.program_id
                self.service[pid] = self.service.get(pid, 0) + n
            if not caching:
                continue
            table = req.block_table
            for j in range(before, req.num_computed_tokens // bs):
                parent = table[j - 1] if j else None
                canonical = self.pool.cache_full_block(table[j], parent, tuple(req.tokens(j * bs, (j + 1) * bs)),
                                                       req.cache_root)
                if canonical is not table[j]:     # same prefix computed twice: share the cached copy
                    self.pool.touch([canonical])
                    self.pool.free([table[j]])
                    table[j] = canonical
                self.pool.note_use((canonical,), reader_of(req))

    def finish(self, req: Request, reason: str) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        if self.config.enable_prefix_caching:
            self.hashes.remember(req, reader_of(req))
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self._release(req)
