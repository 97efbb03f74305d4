"""The seams the fronts stand on: an engine built from parts (a Runner that computes nothing, one
virtual clock for everything), typed events to the scheduler, observers with nothing to pay when
none is registered, and user sinks that may fail without taking the scheduler with them."""
from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from agentrt import Agent, Runtime, Workflow, tool
from agentrt.clock import MONOTONIC, VirtualClock, VirtualTimeLoop, run_virtual
from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.backend import Runner
from agentrt.engine.observe import EngineObserver
from agentrt.engine.policy import EnginePolicy
from agentrt.sched.front import WorkflowScheduler
from agentrt.sched.policies import AgentrtPolicy
from agentrt.sched.predictor import ToolPausePredictor
from fake_runner import EchoRunner
from runtime_helpers import P, Recorder


class Job(BaseModel):
    task: str = "sort a list"
    plan: str = ""
    result: str = ""
    answer: str = ""


@tool(expected_duration=30.0, timeout=120.0)
async def long_build(task: str) -> str:
    """A build that takes half a minute."""
    await asyncio.sleep(30.0)
    return f"built {task}"


def build_workflow():
    wf = Workflow("build_job", Job, output="answer")
    planner = Agent("planner", params=P(4))
    wf.llm("plan", planner, "Plan: {task}", output="plan")
    wf.tool("build", long_build, {"task": "{task}"}, output="result")
    wf.llm("report", planner, "Report: {result}", output="answer")
    wf.sequence("plan", "build", "report")
    return wf


def virtual_engine(tiny_loaded, clock: VirtualClock, **config) -> LLMEngine:
    cfg = EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=1024, **config)
    return LLMEngine(tiny_loaded, cfg, runner=lambda layout: EchoRunner(layout, clock), clock=clock)


# ------------------------------------------------------------------------------------------ clock
def test_virtual_time_loop_jumps_to_the_next_timer():
    clock = VirtualClock(5.0)
    order = []

    async def main():
        async def after(s, tag):
            await asyncio.sleep(s)
            order.append((tag, clock.now()))
        await asyncio.gather(after(30, "b"), after(2, "a"), asyncio.wait_for(after(100, "never"), timeout=60))

    began = time.perf_counter()
    with pytest.raises(TimeoutError):
        run_virtual(main(), clock)
    assert time.perf_counter() - began < 1.0
    assert order == [("a", 7.0), ("b", 35.0)] and clock.now() == pytest.approx(65.0)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_virtual_time_loop_waits_for_threads_without_moving_the_clock():
    clock = VirtualClock()
    loop = VirtualTimeLoop(clock)
    try:
        assert loop.run_until_complete(asyncio.to_thread(lambda: time.sleep(0.05) or 7)) == 7
    finally:
        loop.close()
    assert clock.now() == 0.0


# ------------------------------------------------------------------------------------------ the stack on a virtual clock
def test_full_runtime_on_a_fake_runner_and_a_virtual_clock(tiny_loaded):
    """A program with a 30 s tool pause runs in well under a second of wall time, on the real
    scheduler, block pool, policy and runtime; its JCT is virtual seconds."""
    clock = VirtualClock()
    engine = virtual_engine(tiny_loaded, clock)
    assert isinstance(engine.runner, Runner) and engine.model is None
    rec = Recorder()

    async def main():
        async with Runtime(AsyncLLMEngine(engine, inline=True), on_event=[rec]) as rt:
            assert rt.clock is clock and isinstance(engine.pool.policy, AgentrtPolicy)
            result = await rt.run(build_workflow(), {"task": "sort"})
            return result, rt.table

    began = time.perf_counter()
    result, table = run_virtual(main(), clock)
    wall = time.perf_counter() - began
    assert result.status == "done", result.error
    assert result.output == "AAAA" and result.state.result == "built sort"
    assert wall < 1.0, f"{wall:.2f} s of wall time for a virtual run"
    steps = engine.runner.steps
    assert steps >= 8                                            # two turns of prefill + 4 tokens each
    assert result.jct == pytest.approx(30.0 + steps * 0.01, abs=1e-6)
    [tool_end] = rec.of("tool_end")
    assert tool_end.data["duration"] == pytest.approx(30.0)
    assert table.predictor.samples("long_build") == [pytest.approx(30.0)]   # the predictor learned virtual time
    assert rec.of("program_end")[0].t == pytest.approx(result.jct)


def test_async_engine_inline_runs_without_a_thread(tiny_loaded):
    clock = VirtualClock()
    aengine = AsyncLLMEngine(virtual_engine(tiny_loaded, clock), inline=True)

    async def main():
        outs = await asyncio.gather(*(aengine.generate([1, 2, 3 + i], SamplingParams(max_tokens=3, ignore_eos=True))
                                      for i in range(4)))
        await aengine.close()
        return outs

    outs = run_virtual(main(), clock)
    assert [o.token_ids for o in outs] == [[65, 65, 65]] * 4
    assert aengine._executor is None and outs[0].metrics["latency_s"] == pytest.approx(0.03)


# ------------------------------------------------------------------------------------------ policy and observers
def test_one_call_installs_eviction_swap_filter_and_order(make_engine):
    from agentrt.sched.program_table import ProgramTable
    engine = make_engine(kv_cache_tokens=256, host_kv_tokens=256)
    eviction, keep = AgentrtPolicy(ProgramTable()), (lambda block: False)
    engine.install_policy(EnginePolicy(eviction, keep, "las"))
    assert engine.pool.policy is eviction and engine.scheduler.config.order == "las"
    engine.generate([[1] * 40, [2] * 40], P(2))
    engine.generate([[3] * 200], P(2))                            # evicts: the filter drops every victim
    stats = engine.stats()
    assert stats["evicted_blocks"] > 0 and stats["swapped_out_blocks"] == 0 and stats["dropped_blocks"] > 0
    with pytest.raises(ValueError, match="unknown order"):
        EnginePolicy(order="sjf")


def test_observers_hear_every_step_and_none_registered_means_no_calls(make_engine):
    engine = make_engine(kv_cache_tokens=256)
    assert engine.pool.observers == ()

    class Steps(EngineObserver):
        def __init__(self):
            self.steps, self.accesses = [], 0

        def on_step(self, batch, in_use):
            self.steps.append((len(batch.requests), in_use))

        def on_access(self, hashes, room):
            self.accesses += len(hashes)

    watch = Steps()
    engine.add_observer(watch)
    engine.generate([[5] * 40], P(3))
    assert len(watch.steps) == engine.num_steps and all(n == 1 and used > 0 for n, used in watch.steps)
    assert watch.accesses >= 40 // 16
    engine.remove_observer(watch)
    heard = len(watch.steps)
    engine.generate([[6] * 40], P(3))
    assert len(watch.steps) == heard and engine.pool.observers == ()


# ------------------------------------------------------------------------------------------ sinks
def test_a_failing_user_sink_is_dropped_loudly_and_the_scheduler_keeps_its_events(make_engine, capsys):
    engine = make_engine(kv_cache_tokens=1024)
    wf = Workflow("two_turns", Job)
    planner = Agent("planner", params=P(3))
    wf.llm("plan", planner, "Plan {task}", output="plan")
    wf.llm("report", planner, "Report {plan}", output="answer")
    wf.sequence("plan", "report")
    calls = []

    def broken(event):
        calls.append(event.event)
        raise RuntimeError("observer bug")

    async def main():
        async with Runtime(engine, on_event=[broken]) as rt:
            result = await rt.run(wf)
            return result, rt.table, list(rt.sinks)

    result, table, sinks = asyncio.run(main())
    entry = table.entries[result.program_id]
    assert result.status == "done" and calls == ["program_start"] and sinks == []
    err = capsys.readouterr().err
    assert "event sink" in err and "observer bug" in err and "removed it" in err
    assert entry.finished and table.step_seconds != 1.0         # the table saw and timed its turns


def test_a_failing_scheduler_part_fails_the_program_instead_of_vanishing(make_engine):
    engine = make_engine(kv_cache_tokens=1024)

    async def main():
        class Broken(ToolPausePredictor):              # continuum's pinner asks it at every ToolStarted
            def pin_time(self, *args, **kwargs):
                raise RuntimeError("pinner bug")
        door = WorkflowScheduler("continuum-ttl", kv=engine.kv_spec, predictor=Broken())
        async with Runtime(engine, scheduler=door) as rt:
            assert rt.scheduler is door and engine.pool.policy is door.engine_policy.eviction
            return await rt.run(build_workflow().compile(), {"task": "x"})

    result = asyncio.run(main())
    assert result.status == "failed" and "pinner bug" in result.error


def test_the_runtime_reads_the_engines_clock(make_engine):
    rt = Runtime(make_engine(kv_cache_tokens=256))
    assert rt.clock is MONOTONIC
    asyncio.run(rt.close())


def test_blocking_calls_run_inline_on_virtual_time_and_in_a_thread_on_the_wall_clock():
    import threading

    from agentrt.clock import VirtualClock, run_virtual

    async def where() -> tuple[str, float]:
        name = await asyncio.to_thread(lambda: threading.current_thread().name)
        return name, asyncio.get_running_loop().time()

    clock = VirtualClock()
    name, now = run_virtual(where(), clock)
    assert name == threading.current_thread().name and now == 0.0     # inline: no thread, no virtual time
    assert asyncio.run(where())[0] != threading.current_thread().name

    async def sleeps_beside_a_thread() -> float:           # a thread's work: the clock waits for it
        timer = asyncio.ensure_future(asyncio.sleep(5.0))
        await asyncio.to_thread(time.sleep, 0.05)
        done = timer.done()
        await timer
        return done
    assert run_virtual(sleeps_beside_a_thread(), VirtualClock()) is False
