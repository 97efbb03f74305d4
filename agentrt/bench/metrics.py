"""Figures of a workflow benchmark: what one run of one policy measured, medians over runs, ratios
between policies, the Bélády ratio and the targets. Pure computations (no engine), so they are
tested on hand-made numbers.

Conventions:
* JCT ratio "a vs b" = b's mean JCT / a's mean JCT: > 1 means `a` finishes programs faster.
* Bélády ratio = the policy's recomputed blocks / Bélády MIN's recomputed blocks on the policy's
  own recorded access log at the same capacity (device tier plus host tier, when the policy runs
  with one: a block either tier holds is not recomputed), less what running requests held as unfinished KV at
  each access, and unable to evict a block a running request holds (None when MIN recomputes
  nothing: printed "=" when the policy does not either, "∞" when it does).
* Recomputed = a full block computed again after it was evicted (the pool's
  `stats_recomputed_blocks`); MIN's recomputes = its misses minus the log's distinct blocks
  (the first computation of every block is compulsory for any policy). A preempted request's full
  blocks count when they are computed again; its partial last block (< a block per preemption) not.
"""
from __future__ import annotations

import statistics
from collections import defaultdict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agentrt.bench.belady import belady
from agentrt.engine.observe import EngineObserver
from agentrt.runtime.events import quantile
from agentrt.sched.meter import PolicyMeter


class ProgramRecord(NamedTuple):
    """How one program of a run ended (from a ProgramResult, or from a replayed trace program)."""
    program_id: str
    status: str
    arrival_s: float          # seconds after the run started
    jct_s: float              # submission to end
    llm_calls: int
    tokens_in: int
    tokens_out: int
    cached_tokens: int
    error: str | None = None


@dataclass(slots=True)
class RunRecord:
    """One run of one policy: per-program outcomes plus the engine's counters."""
    policy: str
    run: int
    wall_s: float
    programs: list[ProgramRecord]
    block_size: int
    tier_blocks: int
    recomputed_blocks: int = 0
    evicted_blocks: int = 0
    preemptions: int = 0
    peak_blocks: int = 0          # most device-tier blocks held by requests at once (sampled per step)
    steps: int = 0
    belady_recomputed_blocks: int = 0
    distinct_blocks: int = 0      # distinct full blocks the run used: the KV a tier that never evicts holds
    accesses: int = 0
    loaded_blocks: int = 0        # brought back from the host tier (when the engine has one)
    timeline: list[tuple] = field(default_factory=list, repr=False)   # for plots: (kind, program, t0, t1, n)
    compute_s: float = 0.0        # the runner's time over all steps (engine clock: virtual on the simulator)
    policy_s: float = 0.0         # wall time in the scheduler's own decisions (agentrt.sched.meter)
    floor_jct_s: float | None = None   # the no-contention floor's mean JCT (agentrt.bench.floor; simulated runs)
    step_log: list[tuple] = field(default_factory=list, repr=False)   # real runs: agentrt.bench.steps rows


def belady_recomputes(access_log: Sequence[Hashable], capacity_blocks: int,
                      rooms: Sequence[int] | None = None,
                      releases: Sequence[tuple[int, Hashable]] | None = None) -> tuple[int, int]:
    """(MIN's recomputed blocks, distinct blocks) on a recorded access log at `capacity_blocks`,
    capped access by access by `rooms` (an AccessRecorder's `access_room`) and with blocks held from
    their use to their release (`release_log`) when given."""
    distinct = len(set(access_log))
    if not access_log:
        return 0, 0
    return belady(access_log, capacity_blocks, rooms, releases).misses - distinct, distinct


def belady_ratio(policy_blocks: int, belady_blocks: int) -> float | None:
    """The policy's recompute over MIN's; None when MIN recomputes nothing (no ratio exists)."""
    if belady_blocks <= 0:
        return None
    return policy_blocks / belady_blocks


def run_figures(run: RunRecord) -> dict[str, Any]:
    """The per-run figures the table and the JSON report (all scalars)."""
    progs = run.programs
    jcts = [p.jct_s for p in progs if p.status == "done"]
    tokens_in = sum(p.tokens_in for p in progs)
    tokens_out = sum(p.tokens_out for p in progs)
    wall = run.wall_s
    ratio = belady_ratio(run.recomputed_blocks, run.belady_recomputed_blocks)
    return {
        "programs": len(progs), "failed": sum(p.status != "done" for p in progs),
        "wall_s": round(wall, 3),
        "mean_jct_s": round(statistics.fmean(jcts), 4) if jcts else 0.0,
        "p50_jct_s": round(quantile(jcts, 0.5), 4), "p95_jct_s": round(quantile(jcts, 0.95), 4),
        "programs_per_s": round(len(jcts) / wall, 4) if wall > 0 else 0.0,
        "output_tokens_per_s": round(tokens_out / wall, 2) if wall > 0 else 0.0,
        "llm_calls": sum(p.llm_calls for p in progs), "tokens_in": tokens_in, "tokens_out": tokens_out,
        "prefix_hit_rate": round(sum(p.cached_tokens for p in progs) / tokens_in, 4) if tokens_in else 0.0,
        "recomputed_blocks": run.recomputed_blocks,
        "recomputed_tokens": run.recomputed_blocks * run.block_size,
        "belady_recomputed_tokens": run.belady_recomputed_blocks * run.block_size,
        "belady_ratio": None if ratio is None else round(ratio, 4),
        "evicted_blocks": run.evicted_blocks, "preemptions": run.preemptions, "host_loaded_blocks": run.loaded_blocks,
        "peak_blocks": run.peak_blocks, "peak_tokens": run.peak_blocks * run.block_size,
        "peak_fraction": round(run.peak_blocks / run.tier_blocks, 4) if run.tier_blocks else 0.0,
        "working_set_tokens": run.distinct_blocks * run.block_size, "steps": run.steps,
        "step_ms": round(1000 * run.compute_s / run.steps, 3) if run.steps else 0.0,
        "policy_ms_per_step": round(1000 * run.policy_s / run.steps, 4) if run.steps else 0.0,
        "jct_growth": jct_growth(progs),
        "floor_mean_jct_s": None if run.floor_jct_s is None else round(run.floor_jct_s, 4),
    }


GROWTH_SUSTAINED = 1.5      # a queue that keeps up: the last arrivals wait at most this much longer


def jct_growth(programs: Sequence[ProgramRecord]) -> float | None:
    """Whether the run kept up with its arrivals: the mean JCT of the last fifth of programs to
    arrive over that of the second fifth (the first is the warm-up). A backlog that grows makes it
    grow; None under 10 programs or when a fifth did not finish."""
    done = sorted((p for p in programs if p.status == "done"), key=lambda p: p.arrival_s)
    fifth = len(done) // 5
    if len(programs) < 10 or len(done) < len(programs) or not fifth:
        return None
    second = statistics.fmean(p.jct_s for p in done[fifth:2 * fifth])
    last = statistics.fmean(p.jct_s for p in done[-fifth:])
    return round(last / second, 4) if second > 0 else None


def median_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of every figure over runs (None where no run has one; ints stay ints when whole)."""
    out: dict[str, Any] = {}
    for key in runs[0] if runs else ():
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        m = statistics.median(values)
        out[key] = int(m) if all(isinstance(v, int) for v in values) and m == int(m) else round(m, 4)
    return out


def jct_ratio(medians: dict[str, dict[str, Any]], policy: str, baseline: str, metric: str = "mean_jct_s"
              ) -> float | None:
    """`policy` vs `baseline` in mean JCT (or `metric`): baseline / policy (> 1: `policy` is faster)."""
    a, b = medians.get(policy), medians.get(baseline)
    if not a or not b or not a[metric] or not b[metric]:
        return None
    return b[metric] / a[metric]


@dataclass(slots=True, frozen=True)
class Target:
    """A benchmark target: `policy` against `baseline` in mean JCT (ratio >= bound), or, with
    baseline "belady", its recompute over Bélády's (ratio <= bound)."""
    policy: str
    baseline: str
    bound: float
    strict: bool = False            # ratio > bound instead of >= (for "better than")
    metric: str = "mean_jct_s"      # or p95_jct_s

    @property
    def text(self) -> str:
        if self.baseline == "belady":
            return f"{self.policy} recompute ≤ {self.bound:g}× Bélády"
        what = {"mean_jct_s": "mean JCT", "p95_jct_s": "p95 JCT"}[self.metric]
        if self.bound == 1 and not self.strict:
            return f"{self.policy} {what} no worse than {self.baseline}'s"
        if self.bound < 1:
            return f"{self.policy} {what} ≤ {1 / self.bound:.3g}× {self.baseline}'s"
        return f"{self.policy} {what} {'better than' if self.strict else f'≥ {self.bound:g}× better than'} " \
               f"{self.baseline}"

    def evaluate(self, medians: dict[str, dict[str, Any]]) -> tuple[float | None, bool | None]:
        """(ratio, met); met None when a policy it needs did not run."""
        if self.policy not in medians:
            return None, None
        if self.baseline == "belady":
            m = medians[self.policy]
            ratio = m["belady_ratio"]
            if ratio is None:          # MIN recomputes nothing: met only when the policy does not either
                return None, not m["recomputed_blocks"]
            return ratio, ratio <= self.bound
        ratio = jct_ratio(medians, self.policy, self.baseline, self.metric)
        if ratio is None:
            return None, None
        return ratio, ratio > self.bound if self.strict else ratio >= self.bound


TARGETS: dict[str, tuple[Target, ...]] = {
    "research_team": (Target("agentrt", "lru", 2.2), Target("agentrt", "continuum", 1.0, strict=True),
                      Target("agentrt", "kvflow", 1.0, strict=True), Target("agentrt", "belady", 1.15)),
    "mooncake": (Target("agentrt", "lru", 1 / 1.05),),
    # issue 10, section 3: KVFlow-shaped pipelines at scale (simulated)
    "agent_pipeline": (Target("agentrt", "lru", 2.5), Target("agentrt", "kvflow", 1.3), Target("agentrt", "continuum", 1.3),
                       Target("agentrt", "belady", 1.15), Target("agentrt", "lru", 1.0, metric="p95_jct_s")),
    # issue 10, section 3: SWE-agent episodes at the papers' scale (simulated; read at the heaviest rate lru sustains)
    "swe_agent@sim": (Target("agentrt", "lru", 2.5), Target("agentrt", "continuum", 1.3), Target("agentrt", "kvflow", 1.3),
                      Target("agentrt", "belady", 1.15), Target("agentrt", "lru", 1.0, metric="p95_jct_s")),
    # issue 10, section 2: long-context agents on the real engine
    "swe_agent": (Target("agentrt", "lru", 1.5), *(Target("agentrt", p, 1.0, strict=True)
                                                  for p in ("lru+host", "continuum", "continuum-ttl", "kvflow")),
                  Target("agentrt", "lru", 1.0, metric="p95_jct_s")),
}


CHECKPOINT_OVERHEAD = 1.05        # a durable run's mean JCT at most 5% above the same policy's


def evaluate_targets(workload: str, medians: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    durable = [Target(p, p.removesuffix("+ckpt"), 1 / CHECKPOINT_OVERHEAD) for p in medians if p.endswith("+ckpt")]
    for t in (*TARGETS.get(workload, ()), *durable):
        ratio, met = t.evaluate(medians)
        out.append({"target": t.text, "policy": t.policy, "baseline": t.baseline, "bound": round(t.bound, 4),
                    "ratio": None if ratio is None else round(ratio, 4), "met": met})
    return out


# ------------------------------------------------------------------------------------------ probe
class AccessRecorder(EngineObserver):
    """The block-access trace Bélády's bound is computed on: every full-block use with the room
    the cache had then, and every release of a cached block by a holder (at its place in the log)."""

    def __init__(self) -> None:
        self.access_log: list[int] = []
        self.access_room: list[int] = []
        self.release_log: list[tuple[int, int]] = []     # (uses logged before it, hash)

    def on_access(self, hashes, room: int) -> None:
        self.access_log.extend(hashes)
        self.access_room.extend([room] * len(hashes))

    def on_release(self, block_hash: int) -> None:
        self.release_log.append((len(self.access_log), block_hash))


class Probe(AccessRecorder):
    """Watches one run of one engine, as an engine observer and a runtime event sink: the block
    access log (for Bélády), device-tier blocks in use after every step's allocation (the peak),
    preemptions, evictions (when, whose blocks), and the runtime events a timeline needs. Times
    are seconds after `start()` on the engine's clock.

    Timeline items: ("llm", program, t0, t1, prompt + output tokens), ("tool", program, t0, t1, 0),
    ("pin", program, t0, t1, 0) from a TTL pin to its expiry or the program's next turn, and
    ("evict", program, t, t, blocks) for evictions of blocks the program had read."""

    def __init__(self, engine):
        super().__init__()
        self.clock = engine.clock
        self.scheduler = None
        self.t0 = self.clock.now()
        self.peak_blocks = self.preemptions = 0
        self.compute_s = 0.0
        self.meter = PolicyMeter()
        self.timeline: list[tuple] = []
        self.calls: dict[str, list[tuple[int, int]]] = defaultdict(list)   # per program: (prompt, output) tokens
        self._llm: dict[str, float] = {}
        self._tool: dict[tuple, deque] = defaultdict(deque)
        self._pin: dict[str, tuple[float, float]] = {}
        self._last_evict: dict[str, int] = {}
        engine.add_observer(self)

    def attach(self, runtime) -> None:
        """Subscribe to a runtime's events; pins are read from its scheduler."""
        self.watch(runtime.scheduler)
        runtime.add_sink(self)

    def watch(self, scheduler) -> None:
        """Read TTL pins from this front door (None: no pins to show)."""
        self.scheduler = scheduler

    def start(self) -> float:
        self.t0 = self.clock.now()
        return self.t0

    def now(self) -> float:
        return self.clock.now() - self.t0

    def on_step(self, batch, in_use: int) -> None:
        self.preemptions += batch.num_preempted
        self.peak_blocks = max(self.peak_blocks, in_use)

    def on_computed(self, batch, seconds: float) -> None:
        self.compute_s += seconds

    def on_evict(self, block) -> None:
        t = self.now()
        for pid in {r[0] for r in block.readers}:
            i = self._last_evict.get(pid)
            if i is not None and t - self.timeline[i][2] < 0.05:      # one mark per burst
                kind, p, t0, _, n = self.timeline[i]
                self.timeline[i] = (kind, p, t0, t, n + 1)
            else:
                self._last_evict[pid] = len(self.timeline)
                self.timeline.append(("evict", pid, t, t, 1))

    def __call__(self, event) -> None:
        t, pid, kind, data = self.now(), event.program, event.event, event.data
        if kind == "llm_start":
            self._llm[data["request_id"]] = t
            self._close_pin(pid, t)
        elif kind == "llm_end":
            started = self._llm.pop(data["request_id"], t)
            self.timeline.append(("llm", pid, started, t, data["tokens_in"] + data["tokens_out"]))
            self.calls[pid].append((data["tokens_in"], data["tokens_out"]))
        elif kind == "tool_start":
            self._tool[(pid, data["tool"])].append(t)
            until = self.scheduler.pinned_until(pid) if self.scheduler is not None else None
            if until:
                self._pin[pid] = (t, until - self.t0)
        elif kind == "tool_end":
            starts = self._tool.get((pid, data["tool"]))
            self.timeline.append(("tool", pid, starts.popleft() if starts else t, t, 0))
        elif kind == "program_end":
            self._close_pin(pid, t)

    def _close_pin(self, pid: str, t: float) -> None:
        pin = self._pin.pop(pid, None)
        if pin is not None:
            self.timeline.append(("pin", pid, pin[0], max(pin[0], min(pin[1], t)), 0))

    def finish(self) -> list[tuple]:
        for pid in list(self._pin):
            self._close_pin(pid, float("inf"))
        return self.timeline
