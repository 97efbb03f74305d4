"""agentrt's batch cap: step costs fitted online from the engine's steps, sqrt(n a / c) programs at
once, applied at program admission; on for agentrt, off for every peer, replaced by max_programs."""
from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from agentrt.clock import VirtualClock
from agentrt.engine import EngineConfig, LLMEngine
from agentrt.engine.policy import EnginePolicy
from agentrt.engine.sim import StepProfile, sim_runner
from agentrt.sched import WorkflowScheduler
from agentrt.sched.admission import AdmissionGate
from agentrt.sched.batch_cap import StepCost


def steps(cost: StepCost, a: float, b: float, c: float, n: int = 64) -> None:
    for i in range(n):
        prefill, decode = (i * 37) % 300 if i % 3 else 0, 1 + (i * 5) % 16
        batch = SimpleNamespace(num_new_tokens=[1] * decode + ([prefill] if prefill > 1 else []))
        cost.on_computed(batch, a + b * (prefill if prefill > 1 else 0) + c * decode)


def test_step_costs_are_fitted_from_the_steps_and_give_the_square_root_cap():
    cost = StepCost(min_steps=32)
    steps(cost, 0.1, 0.002, 0.04, n=31)
    assert cost.coefficients() is None and cost.cap(16) is None          # too few steps yet
    steps(cost, 0.1, 0.002, 0.04, n=10)
    a, b, c = cost.coefficients()
    assert (a, b, c) == pytest.approx((0.1, 0.002, 0.04), rel=1e-6)
    assert cost.cap(16) == math.ceil(math.sqrt(16 * 0.1 / 0.04)) == 7
    assert cost.cap(1) is None
    gpu = StepCost()
    steps(gpu, 0.0126, 7.6e-5, 6.7e-5)                                  # a 70B on four GPUs: everyone runs
    assert gpu.coefficients() is not None and gpu.cap(64) is None


def test_steps_all_of_one_shape_determine_no_fit():
    cost = StepCost(min_steps=4)
    for _ in range(50):
        cost.on_computed(SimpleNamespace(num_new_tokens=[1] * 8), 0.3)
    assert cost.coefficients() is None and cost.cap(16) is None


def test_the_gate_admits_up_to_the_cap_it_is_given_counting_waiting_programs():
    seen = []

    def cap(present: int) -> int:
        seen.append(present)
        return 2

    async def main():
        gate = AdmissionGate(None, cap=cap)                              # no memory check: the cap alone
        order = []

        async def program(pid):
            await gate.acquire(pid, "wf")
            order.append(pid)
        tasks = [asyncio.ensure_future(program(p)) for p in "abcd"]
        await asyncio.sleep(0.01)
        assert order == ["a", "b"] and gate.waited == 2 and gate.waiting == 2
        gate.release("a")
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"] and gate.waiting == 1
        gate.release("b")
        await asyncio.gather(*tasks)
        assert gate.waiting == 0
    asyncio.run(main())
    assert max(seen) == 4                                                # 2 running + 2 waiting at the peak


def test_agentrt_caps_by_step_costs_and_its_peers_do_not(tiny_loaded):
    clock = VirtualClock()
    profile = StepProfile("t", "hand-made", base_s=0.1, prefill_token_s=1e-3, decode_seq_s=0.04)
    engine = LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=2048),
                       runner=sim_runner(profile, clock, token=97, block_bytes=4096), clock=clock)
    door = WorkflowScheduler("agentrt", kv=engine.kv_spec, clock=clock)
    assert door.step_cost is not None and door.admission is not None and door.admission.capacity is None
    engine.install_policy(door.engine_policy)
    assert door.step_cost in engine.pool.observers                       # installed with the policy
    from agentrt.engine import SamplingParams
    engine.generate([[5 + i] * (20 + 13 * i) for i in range(12)], SamplingParams(max_tokens=6, ignore_eos=True))
    assert door.step_cost.steps == engine.num_steps
    engine.install_policy(EnginePolicy())                                # another policy: the observer goes
    assert door.step_cost not in engine.pool.observers
    for name in ("lru", "continuum", "kvflow"):
        assert WorkflowScheduler(name, kv=engine.kv_spec).step_cost is None
    capped = WorkflowScheduler("agentrt", kv=engine.kv_spec, max_programs=3)
    assert capped.step_cost is None and capped.admission.max_programs == 3
    assert WorkflowScheduler("agentrt", kv=engine.kv_spec, batch_cap=False).admission is None
