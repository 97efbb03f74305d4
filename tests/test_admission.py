"""Program-level admission: a program starts only when the device tier can hold it."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agentrt import EngineConfig, LLMEngine, Runtime
from agentrt.runtime import Event
from agentrt.sched.admission import AdmissionGate
from agentrt.sched.events import LLMCallEnded, LLMCallStarted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflows"))
import coding_agent  # noqa: E402

sys.path.pop(0)


def turn(gate, pid: str, context: int, width: int = 1) -> None:
    """`width` concurrent turns of `pid`, each with a context of `context` tokens."""
    for i in range(width):
        gate.publish(LLMCallStarted(pid, f"{pid}/{i}", "a", "s", context - 100, 0.0))
    for i in range(width):
        gate.publish(LLMCallEnded(pid, f"{pid}/{i}", "a", "s", context - 100, 100, 0, 0.0))


def test_gate_admits_what_fits_oldest_first_and_learns_footprints():
    async def main():
        gate = AdmissionGate(1000, headroom=1.0, first_guess=0.3)       # a new workflow: 300 tokens
        order = []

        async def program(pid):
            await gate.acquire(pid, "wf")
            order.append(pid)

        await gate.acquire("a", "wf")
        await gate.acquire("b", "wf")
        await gate.acquire("c", "wf")                                   # 900 of 1000
        waiting = [asyncio.ensure_future(program(p)) for p in ("d", "e")]
        await asyncio.sleep(0.01)
        assert order == [] and gate.waited == 2
        turn(gate, "a", 250, width=2)                                   # 2 branches x 250: footprint 500
        assert gate.estimate("wf") == 500
        gate.release("a")                                               # a ends: its 500 is the estimate
        await asyncio.sleep(0.01)
        assert order == [] and gate.finished["wf"] == [500]             # 300 + 300 + 500 > 1000: d waits
        turn(gate, "b", 500)
        gate.release("b")                                               # c (500) + d (500) fit, e does not
        await asyncio.sleep(0.01)
        assert order == ["d"]                                           # the oldest waiter first
        turn(gate, "c", 500)
        gate.release("c")
        await asyncio.sleep(0.01)
        assert order == ["d", "e"]
        await asyncio.gather(*waiting)
    asyncio.run(main())


def test_a_lone_program_is_always_admitted():
    async def main():
        gate = AdmissionGate(10)
        await gate.acquire("big", "wf")
        assert gate.active == {"big": "wf"}
    asyncio.run(main())


def run_sessions(loaded, n: int, *, cancel_one: bool = False):
    engine = LLMEngine(loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=1024))
    wf = coding_agent.build(fixed_shape=True, rounds=2, output_tokens=8, tool_seconds=0.05)
    events = []

    async def main():
        async with Runtime(engine, policy="agentrt", admission=True, on_event=[events.append]) as rt:
            programs = [rt.submit(wf, {"task": f"task {i}: " + "abc " * 20}) for i in range(n)]
            if cancel_one:
                await asyncio.sleep(0.02)
                assert rt.cancel(programs[-1].id)
            return [await p.result() for p in programs], rt.admission
    results, gate = asyncio.run(main())
    return engine, results, gate, events


def test_agentrt_runtime_queues_programs_that_do_not_fit(tiny_loaded, check_blocks):
    engine, results, gate, events = run_sessions(tiny_loaded, 8)
    assert all(r.status == "done" for r in results)
    assert gate.waited > 0 and not gate.active
    starts = [e for e in events if e.event == "program_start"]
    assert len(starts) == 8 and max(e.data["queued"] for e in starts) > 0
    queued = {e.program: e.data["queued"] for e in starts}
    assert all(r.jct >= queued[r.program_id] for r in results)           # JCT counts the wait
    check_blocks(engine)


def test_cancelling_a_program_waiting_for_admission(tiny_loaded, check_blocks):
    engine, results, gate, events = run_sessions(tiny_loaded, 8, cancel_one=True)
    assert [r.status for r in results] == ["done"] * 7 + ["cancelled"]
    last = results[-1].program_id
    assert [e.event for e in events if e.program == last] == ["program_start", "program_end"]
    assert not gate.active
    check_blocks(engine)


def test_max_programs_caps_the_programs_running_at_once():
    async def main():
        gate = AdmissionGate(10**6, max_programs=2)                     # room for all: only the cap binds
        order = []

        async def program(pid):
            await gate.acquire(pid, "wf")
            order.append(pid)

        tasks = [asyncio.ensure_future(program(p)) for p in "abcd"]
        await asyncio.sleep(0.01)
        assert order == ["a", "b"] and gate.waited == 2
        gate.release("b")
        await asyncio.sleep(0.01)
        assert order == ["a", "b", "c"]                                 # oldest waiter first
        gate.release("a")
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c", "d"]
    asyncio.run(main())


def test_max_programs_must_be_positive_and_installs_the_gate(make_engine):
    with pytest.raises(ValueError, match="max_programs must be >= 1"):
        AdmissionGate(1000, max_programs=0)
    rt = Runtime(make_engine(kv_cache_tokens=256), policy="agentrt", max_programs=3)
    assert rt.admission is not None and rt.admission.max_programs == 3 and rt.admission is rt.scheduler.admission
    asyncio.run(rt.close())
