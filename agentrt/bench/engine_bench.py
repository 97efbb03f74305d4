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
- Each (case, peer): one warm-up call, never counted, then `runs` measured runs; the median is
  reported. The warm-up is the case's own generate call (same batch, same prompts) cut to
  WARMUP_NEW new tokens, so it meets the case's shapes at a fraction of its cost; all peers
  warm up before any is measured.
  After the first measured run, no further run starts once it is predicted to end past
  `budget_s` (counted from the warm-up); the JSON lists every run.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from agentrt.bench.peers import AgentrtPeer, Peer

WARMUP_NEW = 8
METHOD = {
    "prompts": "synthetic token ids from a seeded generator, identical for every peer",
    "generation": "greedy, end-of-sequence ignored, exactly the requested new tokens (checked)",
    "prefill": "prompt tokens / T(generate 1 new token)",
    "decode": "batch * (new - 1) / (T(new tokens) - T(1 new token)), both calls in the same run",
    "agents": "wall time of one generate call over all requests (lower is better)",
    "runs": f"one uncounted warm-up (same prompts, {WARMUP_NEW} new tokens at most), then measured runs; "
            "median; after the first, no run starts that would end past budget_s",
    "caches": "every peer drops its KV caches before each generate call",
}
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


LLAMA = "llama.cpp"
CASES: tuple[Case, ...] = (
    Case("prefill512", "prefill 512 tok", "prefill", 1, 512,
         targets=(Target("transformers", 1.0), Target(LLAMA, 2.0))),
    Case("prefill2048", "prefill 2048 tok", "prefill", 1, 2048,
         targets=(Target("transformers", 1.0), Target(LLAMA, 2.0))),
    Case("decode1", "decode b1", "decode", 1, 256, 64, targets=(Target("transformers", 2.5), Target(LLAMA, 1.0))),
    Case("decode8", "decode b8", "decode", 8, 256, 64),
    Case("decode32", "decode b32", "decode", 32, 256, 64, targets=(Target("transformers", 5.0), Target(LLAMA, 4.0))),
    Case("agents32", "32 agents", "agents", 32, 128, 64, shared_len=1024,
         targets=(Target("transformers", 5.0), Target(LLAMA, 4.0))),
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
    warmup_s: float
    seconds: float
    info: dict = field(default_factory=dict)


@dataclass(slots=True)
class CaseResult:
    case: Case
    results: dict[str, Measurement]          # peer name -> measurement
    skipped: str | None = None
    errors: dict[str, str] = field(default_factory=dict)   # peer name -> what went wrong

    def best_of(self, family: str) -> Measurement | None:
        """The peer's best figure over its settings: `transformers` covers transformers-float32 and
        transformers-bfloat16 when both ran ("its best settings")."""
        runs = [m for name, m in self.results.items() if name == family or name.startswith(family + "-")]
        if not runs:
            return None
        pick = max if self.case.higher_is_better else min
        return pick(runs, key=lambda m: m.median)

    def ratio(self, peer: str) -> float | None:
        """agentrt relative to `peer` (a peer name or family); > 1 means agentrt is better."""
        ours, theirs = self.results.get("agentrt"), self.results.get(peer) or self.best_of(peer)
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


def warm_up(peer: Peer, case: Case, prompts: list[list[int]]) -> float:
    return _timed(peer, prompts, min(case.max_new, WARMUP_NEW))


def measure(peer: Peer, case: Case, prompts: list[list[int]], runs: int, budget_s: float,
            log: Callable[[str], None], warmup_s: float = 0.0) -> Measurement:
    """Measured runs of `case`; the budget counts from the (already done) warm-up."""
    start = time.perf_counter() - warmup_s
    values: list[float] = []
    last = 0.0
    while len(values) < runs and not (values and (time.perf_counter() - start) + last > budget_s):
        t0 = time.perf_counter()
        values.append(one_run(peer, case, prompts))
        last = time.perf_counter() - t0
        log(f"  {case.name:<12} {peer.name:<13} run {len(values)}/{runs}: {values[-1]:.2f} {case.unit} in {last:.1f} s")
    return Measurement(statistics.median(values), values, warmup_s, time.perf_counter() - start, peer.run_info())


def run_bench(peers: list[Peer], cases: list[Case], runs: int, budget_s: float,
              log: Callable[[str], None]) -> list[CaseResult]:
    ours = peers[0]
    assert isinstance(ours, AgentrtPeer)
    results = []
    for case in cases:
        need = case.shared_len + case.prompt_len + case.max_new
        if need > ours.engine.max_model_len:
            why = f"needs {need} tokens of context, the model holds {ours.engine.max_model_len}"
            log(f"[{case.name}] skipped: {why}")
            results.append(CaseResult(case, {}, why))
            continue
        log(f"[{case.name}] {case.title}: batch {case.batch}, prompt {case.shared_len + case.prompt_len}, "
            f"{case.max_new} new")
        results.append(run_case(peers, case, make_prompts(case, ours.vocab_size, ours.special_ids),
                                runs, budget_s, log))
    return results


def run_case(peers: list[Peer], case: Case, prompts: list[list[int]], runs: int, budget_s: float,
             log: Callable[[str], None]) -> CaseResult:
    """All peers warm up before any is measured, so the process has met every shape of the case
    (allocator state included: it is shared by the peers of one process) before timing starts."""
    result = CaseResult(case, {})
    warm: dict[str, float] = {}
    for peer in peers:
        with _recorded(result, peer.name, log):
            warm[peer.name] = warm_up(peer, case, prompts)
            log(f"  {case.name:<12} {peer.name:<13} warm-up: {warm[peer.name]:.1f} s")
    for peer in peers:
        if peer.name in warm:
            with _recorded(result, peer.name, log):
                result.results[peer.name] = measure(peer, case, prompts, runs, budget_s, log, warm[peer.name])
    return result


@contextmanager
def _recorded(result: CaseResult, peer: str, log: Callable[[str], None]) -> Iterator[None]:
    """One peer failing must not void the others' figures: record the error and go on."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        result.errors[peer] = f"{type(e).__name__}: {e}"
        log(f"  {result.case.name:<12} {peer:<13} FAILED: {result.errors[peer]}")
