"""The step recorder: every computed step's shape, what the CPU path pads (context prefill chunks)
and shares (a cascade decode's common prefix), beside the runner's seconds; and the comparison of
those steps with a step profile, by kind."""
from __future__ import annotations

import pytest

from agentrt.bench.steps import STEP_FIELDS, StepRecorder, compare_steps
from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.sim import StepProfile


def test_the_recorder_sees_padded_context_chunks_and_a_shared_decode_prefix(tiny_loaded):
    engine = LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096, num_threads=1))
    recorder = StepRecorder(block_size=engine.config.block_size)
    engine.add_observer(recorder)
    shared = [7] * 96                                           # 6 blocks of 16 every request starts with
    engine.generate([shared + [1] * 10], SamplingParams(max_tokens=1, ignore_eos=True))
    engine.generate([shared + [2] * 20, shared + [3] * 40], SamplingParams(max_tokens=4, ignore_eos=True))
    rows = recorder.rows
    assert all(len(r) == len(STEP_FIELDS) and r[-1] > 0 for r in rows)
    field = {name: i for i, name in enumerate(STEP_FIELDS)}
    # the two prompts after the cached 96 tokens: one padded batch of 2 chunks (longest 40), keys to 96 + 40 = 136 -> 144
    chunk = next(r for r in rows if r[field["ctx_rows"]] == 2)
    assert chunk[field["prefill"]] == 60 and chunk[field["ctx_padded"]] == 2 * 40 * 144
    # their decodes share the 96 cached tokens (6 whole blocks): the cascade's prefix
    decodes = [r for r in rows if r[field["decode"]] == 2 and r[field["prefill"]] == 0]
    assert decodes and all(r[field["decode_shared"]] == 96 for r in decodes)
    assert all(r[field["decode_shared"]] == 0 for r in rows if r[field["decode"]] < 2)


def test_steps_are_set_against_a_profile_by_kind():
    profile = StepProfile("t", "hand-made", base_s=0.01, prefill_token_s=1e-3, decode_seq_s=1e-3)
    rows = [(0, 4, 0, 400, 100, 0, 0, 0, 0.028),           # decode: predicted 14 ms, measured 28
            (100, 0, 5050, 0, 0, 0, 0, 0, 0.110),          # prefill: predicted 110 ms exactly
            (100, 2, 5050, 200, 100, 0, 0, 0, 0.100)]      # mixed: predicted 112 ms
    by_kind = {k["kind"]: k for k in compare_steps(rows, profile)}
    assert by_kind["decode"]["error"] == pytest.approx(-0.5) and by_kind["prefill"]["error"] == pytest.approx(0.0)
    assert by_kind["mixed"]["sim_ms"] == pytest.approx(112.0) and by_kind["mixed"]["steps"] == 1
    assert sum(k["share_of_time"] for k in by_kind.values()) == pytest.approx(1.0)


def test_a_profile_fitted_to_recorded_steps_recovers_the_padded_and_shared_terms():
    import numpy as np

    from agentrt.bench.calibrate import fit_steps
    truth = dict(base_s=0.1, prefill_token_s=2e-3, decode_seq_s=5e-3, context_token_s=1e-6,
                 decode_context_token_s=1.2e-5, context_padded_s=3e-8, decode_shared_token_s=4e-6)
    profile = StepProfile("t", "truth", decode_padded=True, **truth)
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(300):
        p, d = int(rng.integers(0, 2048)) * int(rng.random() < 0.6), int(rng.integers(0, 24))
        longest, shared = int(rng.integers(200, 4000)), 0
        if d > 1 and rng.random() < 0.5:
            shared = 16 * int(rng.integers(4, longest // 16))
        pctx = p * int(rng.integers(0, 3000)) + p * (p + 1) // 2 if p else 0
        padded = p * int(rng.integers(1, 3)) * int(rng.integers(500, 4000)) if p else 0
        row = [p, d, pctx, 0, longest, 1 if padded else 0, padded, shared]
        if p == 0 and d == 0:
            continue
        rows.append([*row, profile.step_seconds(p, d, pctx, 0, longest, padded, shared)])
    values, details = fit_steps(rows)
    for k, v in truth.items():
        assert values[k] == pytest.approx(v, rel=1e-3), k
    assert details["steps"] == len(rows) and details["max_abs_rel_error"] < 1e-6
    fitted = StepProfile("f", "fit", decode_padded=True, **values)
    assert fitted.models_padding and compare_steps(rows, fitted)[0]["error"] == pytest.approx(0.0, abs=1e-6)
