"""`agentrt bench workflows` (and the harness `bench replay` shares): the KV policies side by side.

Method:
* The model is loaded once; every (run, policy) gets a FRESH engine on those weights with the
  device tier at `kv_tokens` (the policy's Runtime sets program or request order), so no policy
  inherits another's cache. Runs interleave the policies (run 1: every
  policy, then run 2, ..., each run starting one policy later in the list) so that load from
  elsewhere on the machine and warm-up effects hit them alike; figures are medians over runs.
* A warm-up run comes first (lru, tier `WARMUP_TIER_TOKENS` or the chosen tier if larger), never
  counted. For workflows it measures the **working set**: the distinct full KV blocks the workload touches (what a
  tier that never evicts would hold; content-addressed, so eviction does not change the count) and
  the longest request. The default tier is `tier_fraction` (40%) of it, never below the longest
  request plus one block (the engine must fit any single request). A replay computes both from the
  trace and warms up on its first few programs only.
* Programs arrive by a seeded Poisson process at `rate` programs/s, or all at once (rate 0).
  Every program has its own text (its index and seeded random words), so prefix caching cannot
  make programs identical; fixed shapes (ignore_eos, exact output lengths, graph-driven tools)
  keep the work the same for every policy.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentrt.bench.metrics import Probe, RunRecord, belady_recomputes
from agentrt.bench.steps import StepRecorder
from agentrt.bench.workloads import Workload
from agentrt.clock import VirtualClock, run_virtual
from agentrt.engine import EngineConfig, LLMEngine
from agentrt.engine.loader import LoadedModel, load_model
from agentrt.engine.model import kv_bytes_per_token
from agentrt.engine.sim import StepProfile, load_profile, sim_runner
from agentrt.sched.policies import BATCH_CAPPED, POLICIES, PROGRAM_ORDERED

WARMUP_TIER_TOKENS = 16384

Log = Callable[[str], None]


DURABLE = "+ckpt"          # a policy run as a durable run (checkpointed every step): agentrt+ckpt
LRU_HOST = "lru+host"      # LRU with the host tier (SGLang HiCache, vLLM's offload connector); plain lru has none


def parse_policies(spec: str) -> list[str]:
    """Comma-separated policy names, in the order given (duplicates dropped); `NAME+ckpt` runs
    NAME with every program checkpointed (its overhead is measured against NAME)."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n.removesuffix(DURABLE) not in (*POLICIES, LRU_HOST)]
    if unknown or not names:
        raise ValueError(f"unknown policy {', '.join(unknown) or repr(spec)}; choose from {', '.join(POLICIES)}, "
                         f"{LRU_HOST} (add {DURABLE} to checkpoint every step, e.g. agentrt{DURABLE})")
    return names


def engine_setup(policy: str, host_tokens: int) -> tuple[str, int]:
    """(the scheduler policy, the host tier in tokens) a benchmark policy runs with: `lru` is vLLM's
    automatic prefix caching (device tier only), `lru+host` adds the host tier, every other
    policy gets the host tier when one is configured."""
    base = policy.removesuffix(DURABLE)
    if base == LRU_HOST:
        if not host_tokens:
            raise ValueError(f"{LRU_HOST} needs a host tier: give --kv-host-tokens")
        return "lru", host_tokens
    return base, 0 if base == "lru" else host_tokens


# ------------------------------------------------------------------------------------------ harness
class Harness:
    """The weights, loaded once, and a fresh engine per run (the same engine settings for every
    policy; how continuum and agentrt schedule programs: `program_order`, `max_programs`)."""

    def __init__(self, model: str, *, dtype: str = "auto", threads: int | None = None, block_size: int = 16,
                 seed: int = 0, host_tokens: int = 0, max_num_seqs: int = 64, program_order: str = "program",
                 max_programs: int | None = None, profile: str | None = None, batch_cap: bool | None = None):
        self.model, self.dtype, self.threads, self.block_size = model, dtype, threads, block_size
        self.host_tokens, self.max_num_seqs = host_tokens, max_num_seqs
        # for the policies that schedule programs (continuum, agentrt): "program" (FCFS) or "las",
        # and a cap on the programs they run at once (None: none)
        self.program_order, self.max_programs = program_order, max_programs
        self.batch_cap = batch_cap          # False: agentrt without its batch cap (None, True: the default, on)
        # the simulator needs the tokenizer and config only, never the weights
        self.loaded: LoadedModel = load_model(model, seed=seed) if model == "tiny-random-llama" else \
            load_model(model, dense=profile is None)
        # --sim: a step-time profile instead of the model, on virtual time (agentrt.engine.sim)
        self.profile: StepProfile | None = load_profile(profile) if profile else None
        if self.profile is not None and self.profile.max_model_len:   # the simulated model's context
            config = copy.copy(self.loaded.config)
            config.max_position_embeddings = self.profile.max_model_len
            self.loaded = dataclasses.replace(self.loaded, config=config)
        self.vocab_size = self.loaded.config.vocab_size
        self.max_positions = self.loaded.config.max_position_embeddings

    def kv_bytes_per_token(self) -> int:
        """Device bytes one token's K and V take over all layers, at the engine's dtype."""
        cfg = EngineConfig(dtype=self.dtype)
        return kv_bytes_per_token(self.loaded.config, cfg.torch_dtype(cfg.torch_device()))

    def engine(self, kv_tokens: int, host_tokens: int | None = None) -> LLMEngine:
        """A fresh engine; the run's Runtime(policy=...) installs the policy and its queue order."""
        cfg = EngineConfig(dtype=self.dtype, block_size=self.block_size, kv_cache_tokens=kv_tokens,
                           num_threads=self.threads, max_model_len=min(self.max_positions, kv_tokens),
                           host_kv_tokens=self.host_tokens if host_tokens is None else host_tokens,
                           max_num_seqs=self.max_num_seqs)
        if self.profile is None:
            return LLMEngine(self.loaded, cfg)
        clock = VirtualClock()
        token = self.loaded.tokenizer.encode(" a", add_special_tokens=False)[-1]   # re-tokenizes as itself
        runner = sim_runner(self.profile, clock, token=token, block_bytes=self.kv_bytes_per_token() * self.block_size)
        return LLMEngine(self.loaded, cfg, runner=runner, clock=clock)

    @property
    def backend(self) -> str:
        return "real" if self.profile is None else f"sim:{self.profile.name}"

    def one_run(self, workload: Workload, policy: str, kv_tokens: int, run: int, *,
                warmup: bool = False) -> RunRecord:
        base, host = engine_setup(policy, self.host_tokens)
        engine = self.engine(kv_tokens, host)
        probe = Probe(engine)
        steps = StepRecorder(self.block_size) if self.profile is None else None   # what fidelity checks step by step
        if steps is not None:
            engine.add_observer(steps)
        options = {"order": self.program_order, "max_programs": self.max_programs} if base in PROGRAM_ORDERED else {}
        if self.batch_cap is False and base in BATCH_CAPPED:      # on by default (max_programs replaces it)
            options["batch_cap"] = False
        with tempfile.TemporaryDirectory(prefix="agentrt-bench-") as folder:
            if policy.endswith(DURABLE):
                options["checkpoint"] = Path(folder) / "runs.db"
            drive = workload.drive(engine, base, probe, warmup, options)
            records, wall = asyncio.run(drive) if self.profile is None else run_virtual(drive, engine.clock)
        stats = engine.stats()
        # MIN with the tiers this policy has: with a host tier, a block either tier holds is not recomputed
        host_blocks = stats["host_blocks"]
        rooms = [r + host_blocks for r in probe.access_room] if host_blocks else probe.access_room
        belady_blocks, distinct = belady_recomputes(probe.access_log, stats["num_blocks"] + host_blocks, rooms,
                                                    probe.release_log)
        return RunRecord(policy, run, wall, sorted(records, key=lambda r: r.arrival_s), stats["block_size"],
                         stats["num_blocks"], stats["recomputed_blocks"], stats["evicted_blocks"],
                         probe.preemptions, probe.peak_blocks, stats["steps"], belady_blocks, distinct,
                         len(probe.access_log), stats["loaded_blocks"], probe.finish(), probe.compute_s,
                         probe.meter.total_s, self._floor(workload, probe), steps.rows if steps else [])

    def _floor(self, workload: Workload, probe: Probe) -> float | None:
        """The run's no-contention floor (a simulated conversation workload only: it needs the profile)."""
        if self.profile is None or workload.conversation_pauses is None:
            return None
        from agentrt.bench.floor import run_floor_s
        return run_floor_s(self.profile, probe.calls, workload.conversation_pauses)


@dataclass
class BenchResult:
    workload: str
    policies: list[str]
    tier_tokens: int
    working_set_tokens: int
    max_request_tokens: int
    runs: dict[str, list[RunRecord]]
    warmup_s: float
    notes: list[str]


def choose_tier(working_set_tokens: int, max_request_tokens: int, block_size: int,
                fraction: float) -> tuple[int, list[str]]:
    """`fraction` of the working set in whole blocks, at least the longest request plus one block."""
    notes = []
    tier = max(block_size, round(working_set_tokens * fraction / block_size) * block_size)
    floor = (-(-max_request_tokens // block_size) + 1) * block_size
    if tier < floor:
        notes.append(f"device tier raised from {tier} to {floor} tokens: the longest request "
                     f"({max_request_tokens} tokens) must fit")
        tier = floor
    return tier, notes


def run_bench(harness: Harness, workload: Workload, policies: list[str], runs: int, kv_tokens: int | None,
              tier_fraction: float, log: Log, *, warmup: bool = True) -> BenchResult:
    notes = list(workload.notes)
    t0 = time.perf_counter()
    working_set, longest = workload.known_working_set_tokens or 0, workload.known_longest_request or 0
    _check_fits(longest, kv_tokens, harness)
    if warmup or (kv_tokens is None and not workload.known_working_set_tokens):
        warm_tier = max(WARMUP_TIER_TOKENS, kv_tokens or 0)
        log(f"warm-up: {workload.describe}, lru, tier {warm_tier} tokens (not counted)")
        rec = harness.one_run(workload, "lru", warm_tier, 0, warmup=True)
        if not workload.known_working_set_tokens:
            working_set, longest = rec.distinct_blocks * rec.block_size, longest_request(rec)
        failed = [p for p in rec.programs if p.status != "done"]
        if failed and len(failed) == len(rec.programs):
            raise ValueError(f"every program failed in the warm-up, e.g. {failed[0].program_id}: {failed[0].error}")
        if failed:
            notes.append(f"warm-up: {len(failed)} program(s) failed, e.g. {failed[0].program_id}: {failed[0].error}")
        log(f"warm-up: {time.perf_counter() - t0:.1f} s; working set {working_set} tokens, "
            f"longest request {longest} tokens" + (f"; {len(failed)} FAILED ({failed[0].error})" if failed else ""))
        _check_fits(longest, kv_tokens, harness)
    warmup_s = time.perf_counter() - t0
    if kv_tokens is None:
        kv_tokens, tier_notes = choose_tier(working_set, longest, harness.block_size, tier_fraction)
        notes += tier_notes
    results: dict[str, list[RunRecord]] = {p: [] for p in policies}
    for k in range(1, runs + 1):
        shift = (k - 1) % len(policies)           # rotate the order: no policy always runs first
        for policy in policies[shift:] + policies[:shift]:
            rec = harness.one_run(workload, policy, kv_tokens, k)
            results[policy].append(rec)
            jcts = [p.jct_s for p in rec.programs if p.status == "done"]
            failed = [p for p in rec.programs if p.status != "done"]
            if failed and not any(n.startswith(f"{policy}: ") for n in notes):
                notes.append(f"{policy}: {len(failed)} program(s) failed, e.g. {failed[0].program_id}: {failed[0].error}")
            log(f"  run {k}/{runs} {policy:<10} mean JCT {statistics.fmean(jcts) if jcts else 0:.2f} s, "
                f"wall {rec.wall_s:.1f} s, recomputed {rec.recomputed_blocks * rec.block_size} tok, "
                f"peak {rec.peak_blocks}/{rec.tier_blocks} blocks"
                + (f", {len(failed)} FAILED ({failed[0].error})" if failed else ""))
    return BenchResult(workload.name, policies, kv_tokens, working_set, longest, results, warmup_s, notes)


def _check_fits(longest: int, kv_tokens: int | None, harness: Harness) -> None:
    """ValueError when the longest request cannot run: past the model's positions or the chosen tier."""
    if longest > harness.max_positions:
        raise ValueError(f"a request of {longest} tokens exceeds the model's {harness.max_positions} positions; "
                         "lower --scale or --output-tokens")
    if kv_tokens is not None and longest and kv_tokens < longest + harness.block_size:
        raise ValueError(f"--kv-device-tokens {kv_tokens} cannot hold the longest request ({longest} tokens) "
                         f"plus a block; give at least {(-(-longest // harness.block_size) + 1) * harness.block_size}")


def longest_request(rec: RunRecord) -> int:
    """The longest request (prompt + output tokens) of a run, from its timeline."""
    return max((n for kind, _, _, _, n in rec.timeline if kind == "llm"), default=0)
