"""The bounds a simulated sweep is read against: the no-contention floor (agentrt.bench.floor),
whether a run kept up with its arrivals (jct_growth, the heaviest rate lru sustains), and
Bélády's MIN over both tiers for a policy that has a host tier."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agentrt.bench.floor import call_floor_s, program_floor_s
from agentrt.bench.metrics import ProgramRecord, jct_growth
from agentrt.bench.sweep import heaviest_sustained
from agentrt.cli import app
from agentrt.clock import VirtualClock
from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.sim import StepProfile, sim_runner

PROFILE = StepProfile("t", "test", base_s=0.01, prefill_token_s=1e-4, decode_seq_s=2e-4, context_token_s=1e-6)


def test_a_lone_call_takes_exactly_its_floor_on_the_simulator(tiny_loaded):
    clock = VirtualClock()
    engine = LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096),
                       runner=sim_runner(PROFILE, clock, token=97, block_bytes=4096), clock=clock)
    engine.generate([[5] * 300], SamplingParams(max_tokens=40, ignore_eos=True))
    assert clock.now() == pytest.approx(call_floor_s(PROFILE, 0, 300, 40))
    before = clock.now()                                  # the same prompt extended: 300 tokens cached
    engine.generate([[5] * 300 + [7] * 100], SamplingParams(max_tokens=10, ignore_eos=True))
    spent = clock.now() - before
    floor = call_floor_s(PROFILE, 300, 100, 10)
    assert floor <= spent <= call_floor_s(PROFILE, 288, 112, 10) + 1e-12   # block-aligned reuse: at most a block more


def test_a_conversation_floor_counts_only_what_each_call_adds_and_every_pause():
    calls = [(100, 20), (180, 30), (300, 5)]               # 100 -> +20 out +60 result -> 180 -> +30 +90 -> 300
    expected = (call_floor_s(PROFILE, 0, 100, 20) + call_floor_s(PROFILE, 120, 60, 30)
                + call_floor_s(PROFILE, 210, 90, 5) + 1.5 + 2.0)
    assert program_floor_s(PROFILE, calls, [1.5, 2.0]) == pytest.approx(expected)
    # a prompt that does not extend the last call still computes at least its last token
    assert program_floor_s(PROFILE, [(100, 20), (50, 1)], []) == pytest.approx(
        call_floor_s(PROFILE, 0, 100, 20) + call_floor_s(PROFILE, 49, 1, 1))


def _records(jcts: list[float]) -> list[ProgramRecord]:
    return [ProgramRecord(f"p{i}", "done", float(i), j, 1, 10, 1, 0) for i, j in enumerate(jcts)]


def test_jct_growth_tells_a_queue_that_keeps_up_from_one_that_falls_behind():
    assert jct_growth(_records([10.0] * 20)) == 1.0
    assert jct_growth(_records([10.0 + 5 * i for i in range(20)])) > 2           # the backlog grows
    assert jct_growth(_records([10.0] * 9)) is None                                 # too few to tell
    failed = _records([10.0] * 20)
    failed[3] = failed[3]._replace(status="error")
    assert jct_growth(failed) is None


def test_the_heaviest_sustained_rate_is_the_last_one_lru_keeps_up_at():
    def rep(rate, growth):
        return {"settings": {"rate": rate}, "policies": {"lru": {"median": {"jct_growth": growth}}}}
    reports = [rep(0.25, 1.1), rep(0.35, 1.4), rep(0.5, 9.0), rep(1.0, None)]
    assert heaviest_sustained(reports)["settings"]["rate"] == 0.35
    assert heaviest_sustained([rep(0.5, 9.0)]) is None


def test_a_sim_report_prints_the_floor_and_reads_section_3s_targets():
    args = ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama", "--sim", "h100-llama3-8b",
            "--programs", "2", "--scale", "0.01", "--turns", "3-3", "--runs", "1", "--policies", "lru,agentrt",
            "--kv-device-tokens", "4096", "--threads", "1", "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for entry in report["policies"].values():
        m = entry["median"]
        assert 0 < m["floor_mean_jct_s"] <= m["mean_jct_s"]
    assert {t["target"] for t in report["targets"]} >= {"agentrt mean JCT ≥ 2.5× better than lru",
                                                          "agentrt mean JCT ≥ 1.3× better than kvflow"}


def test_belady_with_a_host_tier_counts_both_tiers():
    args = ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama", "--sim", "h100-llama3-8b",
            "--programs", "6", "--scale", "0.02", "--turns", "4-5", "--runs", "1", "--policies", "lru,lru+host",
            "--kv-device-tokens", "512", "--kv-host-tokens", "65536", "--threads", "1", "--no-warmup", "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    med = {p: e["median"] for p, e in json.loads(result.stdout)["policies"].items()}
    assert med["lru"]["belady_recomputed_tokens"] > 0           # the device tier alone must lose blocks
    assert med["lru+host"]["belady_recomputed_tokens"] == 0     # the host tier holds every one of them


def test_the_floor_stays_a_floor_when_the_profile_models_the_padded_prefill_batch(tiny_loaded):
    import dataclasses
    padded = dataclasses.replace(PROFILE, context_padded_s=1e-7, decode_padded=True, decode_shared_token_s=1e-6)
    clock = VirtualClock()
    engine = LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096),
                       runner=sim_runner(padded, clock, token=97, block_bytes=4096), clock=clock)
    engine.generate([[5] * 300], SamplingParams(max_tokens=4, ignore_eos=True))
    before = clock.now()
    engine.generate([[5] * 300 + [7] * 100], SamplingParams(max_tokens=10, ignore_eos=True))
    spent = clock.now() - before
    floor = call_floor_s(padded, 300, 100, 10)
    assert floor > call_floor_s(PROFILE, 300, 100, 10)          # the padded batch is charged
    assert floor <= spent <= call_floor_s(padded, 288, 112, 10) + 1e-12    # block-aligned reuse, 400 keys padded
