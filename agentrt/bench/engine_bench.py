"""`agentrt bench engine`: agentrt, transformers and llama.cpp side by side, same prompts.

Method (the same for every peer):

- Prompts are synthetic token ids, drawn from a seeded generator (special tokens excluded),
  so every peer and every run sees identical inputs.
- Every generation is greedy with end-of-sequence ignored: exactly `max_new` tokens per
  prompt (checked; a short output is an error, not a faster figure).
- Before each generate call the peer drops its KV caches (`Peer.reset`), so no run profits
  from an earlier one. Within a call, caching is the peer's own business: agentrt's prefix
  cache and llama.cpp's reuse of the previous sequence's prefix are part of what is measured.
- prefill: tok/s = prompt tokens / time of a generate with max_new=1 (time to first token).
- decode: tok/s = B * (64 - 1) / (T(64 new) - T(1 new)). Both calls run back to back in one
  measured run; the subtraction removes prefill and the first token, so what is left is the
  63 decode steps of every sequence (for agentrt this includes whatever decode work its
  scheduler overlaps with prefill: the difference is still exactly the cost of 63 more tokens).
- agents: wall time of one generate call over all 32 requests; lower is better.
- Each (case, peer): one warm-up run, then `runs` measured runs; the median is reported. A
  warm-up run that took >= LONG_RUN_S seconds has amortized start-up costs (thread pools,
  allocator growth) to under 1% and doubles as the first measured run; no further run starts
  once the next one is predicted to overshoot `budget_s`. Both are recorded in the JSON.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from agentrt.bench.peers import AgentrtPeer, Peer

LONG_RUN_S = 15.0
Kind = Literal["prefill", "decode", "agents"]


class BenchError(RuntimeError):
    pass


@dataclass(slots=True, frozen=True)
class Target:
    peer: str
    min_ratio: float


@dataclass(slots=True, frozen=True)
class Case:
    name: str
    title: str
    kind: Kind
    batch: int
    prompt_len: int            # per request; for `agents`, the request's own part
    max_new: int = 1
    shared_len: int = 0        # a prefix every request of the batch starts with
    targets: tuple[Target, ...] = ()

    @property
    def unit(self) -> str:
        return "s" if self.kind == "agents" else "tok/s"

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "agents"


CASES: tuple[Case, ...] = (
    Case("prefill512", "prefill 512 tok", "prefill", 1, 512, targets=(Target("transformers", 1.0),)),
    Case("prefill2048", "prefill 2048 tok", "prefill", 1, 2048, targets=(Target("transformers", 1.0),)),
    Case("decode1", "decode b1", "decode", 1, 256, 64, targets=(Target("transformers", 2.5),)),
    Case("decode8", "decode b8", "decode", 8, 256, 64),
    Case("decode32", "decode b32", "decode", 32, 256, 64, targets=(Target("transformers", 5.0),)),
    Case("agents32", "32 agents", "agents", 32, 128, 64, shared_len=1024,
         targets=(Target("transformers", 5.0), Target("llama.cpp", 3.0))),
)
CASE_NAMES = tuple(c.name for c in CASES)


def select_cases(spec: str | None) -> list[Case]:
    if not spec:
        return list(CASES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASE_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown case(s) {', '.join(unknown) or repr(spec)}; choose from {', '.join(CASE_NAMES)}")
    return [c for c in CASES if c.name in names]


def make_prompts(case: Case, vocab_size: int, special_ids: set[int], seed: int = 0) -> list[list[int]]:
    """Deterministic synthetic prompts: `shared_len` common ids, then each request's own ids."""
    low = min(100, vocab_size // 4)               # skip the control/special region at the start
    pool = torch.tensor([t for t in range(low, vocab_size) if t not in special_ids])
    g = torch.Generator().manual_seed(seed * 1_000_003 + case.batch * 7919 + case.prompt_len + case.shared_len)

    def draw(n: int) -> list[int]:
        return pool[torch.randint(len(pool), (n,), generator=g)].tolist()

    shared = draw(case.shared_len)
    return [shared + draw(case.prompt_len) for _ in range(case.batch)]


@dataclass(slots=True)
class Measurement:
    median: float
    runs: list[float]
    warmup_reused: bool
    seconds: float
    info: dict = field(default_factory=dict)


@dataclass(slots=True)
class CaseResult:
    case: Case
    results: dict[str, Measurement]          # peer name -> measurement
    skipped: str | None = None

    def ratio(self, peer: str) -> float | None:
        """agentrt relative to `peer`; > 1 means agentrt is better."""
        ours, theirs = self.results.get("agentrt"), self.results.get(peer)
        if ours is None or theirs is None or ours.median <= 0 or theirs.median <= 0:
            return None
        return ours.median / theirs.median if self.case.higher_is_better else theirs.median / ours.median

    def target_met(self, t: Target) -> bool | None:
        r = self.ratio(t.peer)
        return None if r is None else r >= t.min_ratio


def _timed(peer: Peer, prompts: list[list[int]], max_new: int) -> float:
    peer.reset()
    t0 = time.perf_counter()
    outs = peer.generate(prompts, max_new)
    elapsed = time.perf_counter() - t0
    bad = [len(o) for o in outs if len(o) != max_new]
    if len(outs) != len(prompts) or bad:
        raise BenchError(f"{peer.name} returned {len(outs)} outputs with lengths {bad[:4]}, "
                         f"expected {len(prompts)} x {max_new} tokens")
    return elapsed


def one_run(peer: Peer, case: Case, prompts: list[list[int]]) -> float:
    """One measurement of `case` on `peer`, in the case's unit."""
    if case.kind == "prefill":
        return sum(map(len, prompts)) / _timed(peer, prompts, 1)
    if case.kind == "agents":
        return _timed(peer, prompts, case.max_new)
    first = _timed(peer, prompts, 1)
    full = _timed(peer, prompts, case.max_new)
    if full <= first:
        raise BenchError(f"{peer.name}: T({case.max_new} new) <= T(1 new); the decode figure is meaningless")
    return case.batch * (case.max_new - 1) / (full - first)


def measure(peer: Peer, case: Case, prompts: list[list[int]], runs: int, budget_s: float,
            log: Callable[[str], None]) -> Measurement:
    start = time.perf_counter()
    warm = one_run(peer, case, prompts)
    last = time.perf_counter() - start
    reused = last >= LONG_RUN_S
    values = [warm] if reused else []
    log(f"  {case.name:<12} {peer.name:<13} warm-up: {warm:.2f} {case.unit} in {last:.1f} s"
        + (" (long: counted as run 1)" if reused else ""))
    while len(values) < runs and not (values and (time.perf_counter() - start) + last > budget_s):
        t0 = time.perf_counter()
        values.append(one_run(peer, case, prompts))
        last = time.perf_counter() - t0
        log(f"  {case.name:<12} {peer.name:<13} run {len(values)}/{runs}: {values[-1]:.2f} {case.unit}")
    return Measurement(statistics.median(values), values, reused, time.perf_counter() - start, peer.run_info())


def run_bench(peers: list[Peer], cases: list[Case], runs: int, budget_s: float,
              log: Callable[[str], None]) -> list[CaseResult]:
    ours = peers[0]
    assert isinstance(ours, AgentrtPeer)
    vocab, special = ours.vocab_size, ours.special_ids
    results = []
    for case in cases:
        need = case.shared_len + case.prompt_len + case.max_new
        if need > ours.engine.max_model_len:
            why = f"needs {need} tokens of context, the model holds {ours.engine.max_model_len}"
            log(f"[{case.name}] skipped: {why}")
            results.append(CaseResult(case, {}, why))
            continue
        prompts = make_prompts(case, vocab, special)
        log(f"[{case.name}] {case.title}: batch {case.batch}, prompt {case.shared_len + case.prompt_len}, "
            f"{case.max_new} new")
        results.append(CaseResult(case, {p.name: measure(p, case, prompts, runs, budget_s, log) for p in peers}))
    return results
