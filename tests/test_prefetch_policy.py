"""Prefetch of the next agent's prefix during a tool pause, and agentrt's swap filter."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agentrt import EngineConfig, LLMEngine, Runtime
from agentrt.sched.policies import worth_swapping
from agentrt.sched.prefetch import NextAgentPrefetcher
from agentrt.sched.program_table import ProgramEntry, ProgramTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflows"))
import coding_agent  # noqa: E402

sys.path.pop(0)


def run_sessions(loaded, policy: str, *, host_tokens: int, programs: int = 6):
    engine = LLMEngine(loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=1024,
                                            host_kv_tokens=host_tokens))
    wf = coding_agent.build(fixed_shape=True, rounds=3, output_tokens=8, tool_seconds=0.15)

    async def main():
        async with Runtime(engine, policy=policy) as rt:
            prefetchers = [rt.scheduler.prefetcher] if rt.scheduler.prefetcher is not None else []
            assert all(isinstance(p, NextAgentPrefetcher) for p in prefetchers)
            results = await rt.run_many(wf, [{"task": f"task {i}: " + "abc " * 20} for i in range(programs)])
            return results, prefetchers
    results, prefetchers = asyncio.run(main())
    return engine, results, prefetchers


@pytest.mark.parametrize("policy", ["kvflow", "agentrt"])
def test_a_tool_pause_prefetches_the_next_agents_prefix(tiny_loaded, check_blocks, policy):
    engine, results, [prefetcher] = run_sessions(tiny_loaded, policy, host_tokens=8192)
    assert all(r.status == "done" for r in results), [r.error for r in results]
    stats = engine.stats()
    assert prefetcher.requested >= len(results) * 2          # every pause asked for the coder's prefix
    assert stats["swapped_out_blocks"] > 0                    # the small device tier overflowed
    if policy == "agentrt":                                   # timed to the predicted return: blocks
        assert stats["prefetched_blocks"] > 0                 # pushed out meanwhile come back early
    engine.pool.check_invariants()
    check_blocks(engine)


@pytest.mark.parametrize("policy", ["lru", "continuum"])
def test_policies_without_prefetch_load_on_demand_only(tiny_loaded, check_blocks, policy):
    engine, results, prefetchers = run_sessions(tiny_loaded, policy, host_tokens=8192)
    assert all(r.status == "done" for r in results)
    assert prefetchers == [] and engine.stats()["prefetched_blocks"] == 0
    assert engine.stats()["loaded_blocks"] > 0
    check_blocks(engine)


def test_agentrt_swaps_only_blocks_a_live_program_will_read():
    from agentrt.engine.block_pool import BlockPool
    table = ProgramTable()
    table.entries["live"] = ProgramEntry("live", 0.0, {"coder": 1}, 2.0)
    table.entries["done"] = ProgramEntry("done", 0.0, {}, 0.0, finished=True)
    pool = BlockPool(4, 2)
    a, b, c = pool.allocate(3)
    a.readers, b.readers, c.readers = {("live", "coder"): 1}, {("done", "coder"): 1}, {}
    decide = worth_swapping(table)
    assert decide(a) and not decide(b) and not decide(c)
    b.readers[("live", "coder")] = 2                          # a shared block: one live reader is enough
    assert decide(b)
    # cost-aware: a round trip dearer than computing the block again is never worth it
    slow_link = worth_swapping(table, copy_seconds=0.02, recompute_seconds=0.03)
    assert not slow_link(a) and not slow_link(b)
    fast_link = worth_swapping(table, copy_seconds=0.001, recompute_seconds=0.03)
    assert fast_link(a) and not fast_link(c)


def test_block_costs_on_the_engine(tiny_loaded):
    """The runtime prices one block of the real engine: its bytes at host-copy speed vs its tokens'
    prefill; on every machine we run on the copy is far cheaper."""
    from agentrt.sched.policies import HOST_COPY_BYTES_PER_SECOND, block_costs
    engine = LLMEngine(tiny_loaded, EngineConfig(kv_cache_tokens=256, host_kv_tokens=256))
    cfg = tiny_loaded.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert engine.runner.block_bytes == cfg.num_hidden_layers * 2 * 16 * cfg.num_key_value_heads * head_dim * 4
    costs = block_costs(engine.runner.block_bytes, 16)
    assert costs["copy_seconds"] == engine.runner.block_bytes / HOST_COPY_BYTES_PER_SECOND
    assert 2 * costs["copy_seconds"] < costs["recompute_seconds"]
    rt = Runtime(engine, policy="agentrt")
    assert rt.scheduler.engine_policy.swap_filter is not None
    asyncio.run(rt.close())
