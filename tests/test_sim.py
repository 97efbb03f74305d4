"""The simulated backend: the real scheduler, pool and policies over a Runner that only advances a
virtual clock by a step-time profile; its calibration fit; and `bench workflows --sim` running
in virtual time, deterministic for a seed."""
from __future__ import annotations

import time

import numpy as np
import pytest

from agentrt.bench.calibrate import fit
from agentrt.clock import VirtualClock
from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.observe import EngineObserver
from agentrt.engine.sim import StepProfile, batch_shape, load_profile, profile_names, sim_runner

PROFILE = StepProfile("test", "hand-made", base_s=0.01, prefill_token_s=1e-4, decode_seq_s=2e-3, context_token_s=1e-6)


def sim_engine(tiny_loaded, profile=PROFILE, **config):
    clock = VirtualClock()
    cfg = EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=2048, **config)
    return LLMEngine(tiny_loaded, cfg, runner=sim_runner(profile, clock, token=97, block_bytes=4096), clock=clock)


def test_the_clock_moves_by_the_profile_for_every_step_shape(tiny_loaded):
    engine = sim_engine(tiny_loaded, max_num_batched_tokens=64)
    shapes = []

    class Shapes(EngineObserver):
        def on_step(self, batch, in_use):
            shapes.append(batch_shape(batch))
    engine.add_observer(Shapes())
    outs = engine.generate([[5] * 100, [6] * 30], SamplingParams(max_tokens=5, ignore_eos=True))
    assert [o.token_ids for o in outs] == [[97] * 5, [97] * 5]
    expected = sum(PROFILE.step_seconds(*s) for s in shapes)
    assert engine.clock.now() == pytest.approx(expected)
    assert shapes[0] == (64, 0, 64 * 65 // 2, 0, 0)                 # a first chunk of 64 fresh tokens
    assert (2, 1, 59, 101, 101) in shapes and (0, 2, 0, 102 + 31, 102) in shapes   # decode reads its context
    assert outs[0].metrics["latency_s"] <= engine.clock.now()


def test_profiles_on_disk_name_their_source():
    names = profile_names()
    assert {"h100-llama3-8b", "h100x4-llama3-70b"} <= set(names)
    big = load_profile("h100x4-llama3-70b")
    assert big.base_s == 0.0126 and big.prefill_token_s == 7.64e-05 and "BLIS" in big.source
    with pytest.raises(ValueError, match="no step profile 'nope'"):
        load_profile("nope")


def test_the_fit_recovers_known_coefficients_and_drops_a_negative_term():
    rng = np.random.default_rng(0)
    truth = {"base_s": 0.02, "prefill_token_s": 5e-4, "decode_seq_s": 3e-3, "context_token_s": 2e-7,
             "decode_context_token_s": 1.2e-5}
    points = []
    for i in range(80):                         # as the calibration measures: decode-only steps and prefill chunks
        if i % 2:
            p, d, c, cd = 0, int(rng.integers(1, 33)), 0, int(rng.integers(100, 30000))
        else:
            p, d, c, cd = int(rng.integers(16, 2048)), 0, int(rng.integers(0, 200000)), 0
        s = StepProfile("t", "truth", **truth).step_seconds(p, d, c, cd)
        points.append(((p, d, c, cd), s * (1 + rng.normal(0, 0.01))))
    values, details = fit(points)
    for k, v in truth.items():
        assert values[k] == pytest.approx(v, rel=0.1), k
    assert details["median_abs_rel_error"] < 0.02
    # steps that get faster with context: that term cannot be negative, it goes
    values, _ = fit([((100, 0, c, 0), 0.05 - 1e-7 * c) for c in range(0, 100000, 5000)])
    assert values["context_token_s"] == 0.0 and min(values.values()) >= 0.0


def test_bench_workflows_on_the_simulated_backend_runs_in_virtual_time_and_repeats(tiny_loaded):
    from agentrt.bench.workflow_bench import Harness, run_bench
    from agentrt.bench.workloads import workflow_workload

    def once():
        harness = Harness("tiny-random-llama", threads=1, profile="h100-llama3-8b")
        work = workflow_workload("coding_agent", 4, 0.0, 0, output_tokens=8, rounds=2, speedup=1.0)
        return run_bench(harness, work, ["lru", "agentrt"], 1, 512, 0.4, lambda m: None, warmup=False)

    began = time.perf_counter()
    a = once()
    wall = time.perf_counter() - began
    b = once()
    ja = {p: [r.jct_s for r in runs[0].programs] for p, runs in a.runs.items()}
    jb = {p: [r.jct_s for r in runs[0].programs] for p, runs in b.runs.items()}
    assert ja == jb                                              # deterministic for a seed
    assert all(r.status == "done" for runs in a.runs.values() for r in runs[0].programs)
    pauses = min(min(js) for js in ja.values())
    assert pauses > 0.05 and wall < 60                           # virtual seconds of tool pauses, no wall wait
    assert a.runs["agentrt"][0].steps > 0


def test_calibration_measures_every_case_on_the_real_engine(tiny_loaded, tmp_path):
    from agentrt.bench.calibrate import DECODE_CASES, calibrate
    lines = []
    profile = calibrate(tiny_loaded, threads=1, dtype="float32", name="cpu-test", machine="test", block_bytes=4096,
                        log=lines.append)
    assert len(lines) == len(DECODE_CASES) + 4 + 6                  # every case ran or was skipped, and said so
    assert sum("skipped" in line for line in lines) == 8             # past tiny-random-llama's 2048 positions
    assert profile.base_s > 0 and min(profile.base_s, profile.prefill_token_s, profile.decode_seq_s,
                                      profile.context_token_s) >= 0
    assert len(profile.fit["points"]) > 3 * len(DECODE_CASES)
    saved = load_profile(profile.save(tmp_path / "cpu-test.json"))
    assert saved == profile and "test" in saved.source


def test_swap_outs_overlap_compute_where_the_profile_says_so():
    from types import SimpleNamespace

    from agentrt.engine.host_tier import Moves
    from agentrt.engine.sim import SimRunner
    layout = SimpleNamespace(block_size=16)
    clocks = {}
    for overlap in (False, True):
        profile = StepProfile("t", "hand-made", base_s=0.0, prefill_token_s=0.0, decode_seq_s=0.0,
                              host_bytes_per_s=1000.0, overlap_swap_out=overlap)
        clock = VirtualClock()
        runner = SimRunner(layout, profile, clock, token=1, block_bytes=1000)      # a second per block
        runner.apply_moves(Moves([1, 2], [0, 1], [], []))      # two swap-outs
        after_out = clock.now()
        clock.advance(5.0)                                      # a step's compute: the write-back fits beside it
        runner.apply_moves(Moves([3], [2], [], []))
        runner.apply_moves(Moves([], [], [0], [4]))            # a demand load right after: waits for block 3's copy
        clocks[overlap] = (after_out, clock.now())
    assert clocks[False] == (2.0, 2.0 + 5.0 + 1.0 + 1.0)
    assert clocks[True] == (0.0, 5.0 + 1.0 + 1.0)              # the first two hid behind the compute
