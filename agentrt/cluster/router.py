"""Routing programs across engine replicas: pure policy over the router's own view of each
replica (requests in flight, programs homed there, an approximate prefix index), with no Ray and
no engine import, so the Ray front and the simulator run the same code.

Policies (`Router(policy, replicas)`):

* `round-robin`   each request to the next live replica.
* `least-loaded`  each request to the replica with the fewest requests in flight.
* `prefix`        request-level prefix affinity, as SGLang's cache-aware router and Ray Serve's
                  PrefixCacheAffinityRouter do it: if the load is imbalanced (busiest minus idlest
                  above `balance_abs_threshold` requests AND busiest above `balance_rel_threshold`
                  x idlest: SGLang's defaults 64 and 1.5) the least-loaded replica; else the replica
                  whose approximate tree matches the longest prefix of the request, when that match
                  covers at least `cache_threshold` of it (SGLang 0.3; Ray's match_rate_threshold
                  0.1), ties to the one with the fewest requests in flight (Ray's rule); else the
                  replica with the smallest tree (both routers' fallback).
* `program`       ours: a program's turns go to its home replica (the one that holds its
                  context); a new program goes where its prefix is cached unless that replica is
                  overloaded (its context load reaches `overload_factor` x the mean and one
                  average program above the idlest replica's), then to the replica with the least
                  context load (a shared prefix is cheap to compute once more, a replica whose KV
                  is oversubscribed recomputes for all of its programs). Context load is the KV
                  the programs homed on a replica hold, paused ones included: each program's
                  latest context, in the request's size unit (tokens, or characters for chat); a
                  program waiting on a tool comes back, which request-level load cannot see, and
                  an old program's long context weighs more than a new one's. A program moves only
                  when its home dies or, between its turns, when its home's load exceeds
                  `move_factor` x the mean and the idlest by `move_abs`; its KV is then recomputed
                  on the new replica.

The router learns what each replica caches from what it routes there (SGLang's approximate tree):
a request's chained block hashes (`token_blocks`, `text_blocks`) go into that replica's LRU index,
bounded at `index_blocks` (about the replica's KV capacity).
"""
from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

POLICIES = ("round-robin", "least-loaded", "prefix", "program")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    cache_threshold: float = 0.3          # prefix: match share that earns affinity (SGLang --cache-threshold)
    balance_abs_threshold: int = 64       # prefix: SGLang --balance-abs-threshold
    balance_rel_threshold: float = 1.5    # prefix: SGLang --balance-rel-threshold
    index_blocks: int = 1 << 16           # blocks each replica's approximate index keeps (LRU)
    overload_factor: float = 1.1          # program: a new program skips its prefix's replica when its context
    overload_abs: float = 1.0             # load is above this x the mean AND this many mean programs above the idlest's
    move_factor: float = 2.0              # program: move between turns only above this x mean load
    move_abs: float = 4.0                 # ... and this many programs above the idlest replica


@dataclass(frozen=True, slots=True)
class Decision:
    replica: str
    reason: str                           # round-robin, least-loaded, imbalanced, prefix, smallest-tree,
    matched_blocks: int = 0               # affinity, placed, moved, failover
    request_blocks: int = 0
    moved_from: str | None = None         # the program's previous home (it moved or failed over)


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What the router knows of one replica (for /metrics and `agentrt status`)."""
    name: str
    alive: bool
    inflight: int
    programs: int
    context_tokens: int                   # the latest context of each program homed there, summed
    routed_requests: int
    routed_tokens: int
    index_blocks: int


class PrefixIndex:
    """Chained block hashes a replica has seen, least recently used first."""
    __slots__ = ("capacity", "_blocks")

    def __init__(self, capacity: int):
        self.capacity, self._blocks = capacity, OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Sequence[int]) -> int:
        """How many leading blocks of `blocks` the index holds."""
        n = 0
        for b in blocks:
            if b not in self._blocks:
                break
            n += 1
        return n

    def insert(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            self._blocks[b] = None
            self._blocks.move_to_end(b)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


@dataclass(slots=True)
class _Replica:
    name: str
    index: PrefixIndex
    alive: bool = True
    inflight: int = 0
    programs: set[str] = field(default_factory=set)
    context_tokens: int = 0
    routed_requests: int = 0
    routed_tokens: int = 0

    @property
    def program_load(self) -> int:
        return len(self.programs)


@dataclass(slots=True)
class _Program:
    home: str
    inflight: int = 0
    tokens: int = 0                       # its latest request's size, counted in its home's context_tokens


def token_blocks(token_ids: Sequence[int], block_size: int = 16) -> list[int]:
    """Chained hashes of the full blocks of a token sequence (what a paged prefix cache keys on)."""
    out, parent = [], 0
    for i in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[i:i + block_size])))
        out.append(parent)
    return out


def text_blocks(text: str, chunk_chars: int = 64) -> list[int]:
    """Chained hashes of the full `chunk_chars` chunks of a text (a character-level stand-in for
    token blocks, as SGLang's and Ray's routers match on characters)."""
    out, h = [], hashlib.blake2b(digest_size=8)
    for i in range(0, len(text) - chunk_chars + 1, chunk_chars):
        h.update(text[i:i + chunk_chars].encode("utf-8", "surrogatepass"))
        out.append(int.from_bytes(h.copy().digest(), "little"))
    return out


class Router:
    """Routes requests to replicas by `policy` (one of POLICIES). Not thread-safe: call it from
    one thread (the front's event loop). `route` counts the request in flight on the replica it
    picks; `done` uncounts it."""

    def __init__(self, policy: str, replicas: Sequence[str], config: RouterConfig | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown router policy {policy!r}; choose from {', '.join(POLICIES)}")
        if not replicas or len(set(replicas)) != len(replicas):
            raise ValueError("a router needs one or more replicas with distinct names")
        self.policy, self.config = policy, config or RouterConfig()
        self._replicas = {n: _Replica(n, PrefixIndex(self.config.index_blocks)) for n in replicas}
        self._programs: dict[str, _Program] = {}
        self._rr = itertools.cycle(list(replicas))
        self.moves = self.failovers = 0

    # ---------------------------------------------------------------- membership
    @property
    def replicas(self) -> list[str]:
        return list(self._replicas)

    def alive(self) -> list[str]:
        return [r.name for r in self._replicas.values() if r.alive]

    def mark_dead(self, name: str) -> list[str]:
        """A replica died: nothing is routed to it and its cache is gone. Returns the programs
        homed there (they are placed anew on their next turn)."""
        rep = self._replicas[name]
        rep.alive, orphans = False, sorted(rep.programs)
        rep.index.clear()
        rep.programs.clear()
        rep.context_tokens = 0
        rep.inflight = 0
        return orphans

    def mark_alive(self, name: str) -> None:
        """A replica (re)joined, with an empty cache."""
        rep = self._replicas[name]
        if not rep.alive:
            rep.alive = True
            rep.index.clear()

    def home_of(self, program_id: str) -> str | None:
        prog = self._programs.get(program_id)
        return prog.home if prog is not None else None

    def loads(self) -> list[ReplicaLoad]:
        return [ReplicaLoad(r.name, r.alive, r.inflight, r.program_load, r.context_tokens, r.routed_requests,
                            r.routed_tokens, len(r.index)) for r in self._replicas.values()]

    # ---------------------------------------------------------------- requests
    def route(self, program_id: str | None, blocks: Sequence[int] = (), tokens: int = 0) -> Decision:
        """Pick the replica for one request of `program_id` (None: a plain request) whose prompt
        has chained block hashes `blocks` and `tokens` tokens."""
        live = [r for r in self._replicas.values() if r.alive]
        if not live:
            raise NoReplicaError("no replica is alive")
        if self.policy == "program" and program_id is not None:
            rep, reason, matched = self._by_program(program_id, live, blocks)
        else:
            rep, reason, matched = self._by_request(live, blocks)
        rep.inflight += 1
        rep.routed_requests += 1
        rep.routed_tokens += tokens
        rep.index.insert(blocks)
        previous = self._track(program_id, rep, tokens) if program_id is not None else None
        return Decision(rep.name, reason, matched, len(blocks), previous)

    def done(self, decision: Decision, program_id: str | None = None, *, ended: bool = False) -> None:
        """The request routed by `decision` ended (`ended`: and its program with it)."""
        rep = self._replicas[decision.replica]
        rep.inflight = max(0, rep.inflight - 1)
        prog = self._programs.get(program_id) if program_id is not None else None
        if prog is not None:
            prog.inflight = max(0, prog.inflight - 1)
        if ended and program_id is not None:
            self.end_program(program_id)

    def end_program(self, program_id: str) -> None:
        prog = self._programs.pop(program_id, None)
        if prog is not None:
            self._unhome(prog, program_id)

    def _unhome(self, prog: _Program, program_id: str) -> None:
        home = self._replicas[prog.home]
        if program_id in home.programs:
            home.programs.discard(program_id)
            home.context_tokens -= prog.tokens

    def _track(self, program_id: str, rep: _Replica, tokens: int) -> str | None:
        """Home the program on `rep` with a context of `tokens`; returns its previous home if it
        had another."""
        prog, previous = self._programs.get(program_id), None
        if prog is None:
            prog = self._programs[program_id] = _Program(rep.name)
        elif prog.home != rep.name:
            previous = prog.home
            self._unhome(prog, program_id)
            prog.home = rep.name
        if program_id in rep.programs:
            rep.context_tokens -= prog.tokens
        rep.programs.add(program_id)
        rep.context_tokens += tokens
        prog.tokens = tokens
        prog.inflight += 1
        return previous

    # ---------------------------------------------------------------- request-level policies
    def _by_request(self, live: list[_Replica], blocks: Sequence[int]) -> tuple[_Replica, str, int]:
        if self.policy == "round-robin":
            while True:
                rep = self._replicas[next(self._rr)]
                if rep.alive:
                    return rep, "round-robin", rep.index.match(blocks)
        least = min(live, key=lambda r: (r.inflight, r.routed_tokens))
        if self.policy == "least-loaded":
            return least, "least-loaded", least.index.match(blocks)
        c = self.config
        busiest = max(r.inflight for r in live)
        if busiest - least.inflight > c.balance_abs_threshold and busiest > c.balance_rel_threshold * least.inflight:
            return least, "imbalanced", least.index.match(blocks)
        matches = [(r.index.match(blocks), r) for r in live]
        best = max(m for m, _ in matches)
        if blocks and best / len(blocks) >= c.cache_threshold:
            rep = min((r for m, r in matches if m == best), key=lambda r: (r.inflight, r.routed_tokens))
            return rep, "prefix", best
        rep = min(live, key=lambda r: (len(r.index), r.inflight))
        return rep, "smallest-tree", rep.index.match(blocks)

    # ---------------------------------------------------------------- program policy
    def _by_program(self, program_id: str, live: list[_Replica],
                    blocks: Sequence[int]) -> tuple[_Replica, str, int]:
        prog = self._programs.get(program_id)
        if prog is not None:
            home = self._replicas[prog.home]
            if not home.alive:
                self.failovers += 1
                rep = self._least_context_load(live)
                return rep, "failover", rep.index.match(blocks)
            if prog.inflight or not self._overloaded(home, live):
                return home, "affinity", home.index.match(blocks)
            self.moves += 1
            rep = self._least_context_load(live)
            return rep, "moved", rep.index.match(blocks)
        return self._place(live, blocks)

    def _place(self, live: list[_Replica], blocks: Sequence[int]) -> tuple[_Replica, str, int]:
        """A new program: where its prefix is cached unless that replica's context load is high."""
        c = self.config
        loads = [r.context_tokens for r in live]
        programs = sum(r.program_load for r in live)
        per_program = sum(loads) / programs if programs else 0.0
        bound = max(min(loads) + c.overload_abs * per_program, c.overload_factor * sum(loads) / len(loads))
        matches = [(r.index.match(blocks), r) for r in live]
        best = max(m for m, _ in matches)
        if blocks and best / len(blocks) >= c.cache_threshold:
            holders = [r for m, r in matches if m == best and (r.context_tokens < bound or not programs)]
            if holders:
                return self._least_context_load(holders), "prefix", best
        rep = self._least_context_load(live)
        return rep, "placed", rep.index.match(blocks)

    def _overloaded(self, home: _Replica, live: list[_Replica]) -> bool:
        c = self.config
        loads = [r.program_load for r in live]
        mean = sum(loads) / len(loads)
        return home.program_load > c.move_factor * mean and home.program_load - min(loads) > c.move_abs

    @staticmethod
    def _least_context_load(candidates: Iterable[_Replica]) -> _Replica:
        return min(candidates, key=lambda r: (r.context_tokens, r.program_load, r.inflight))


class NoReplicaError(RuntimeError):
    """Every replica is dead (the front answers 503 until one rejoins)."""
