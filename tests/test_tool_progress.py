"""ToolProgress: a tool's own report (remote progress, report_progress) reaches the scheduler; the
program table's pause estimate and agentrt's timed prefetch use it."""
from __future__ import annotations

import asyncio

from pydantic import BaseModel

from runtime_helpers import Recorder, ScriptedEngine, arun
from agentrt import Runtime, Workflow, tool
from agentrt.clock import VirtualClock
from agentrt.sched.events import ProgramStarted, ToolEnded, ToolProgress, ToolStarted, remaining_seconds
from agentrt.sched.predictor import ToolPausePredictor
from agentrt.sched.prefetch import LEAD_SECONDS, NextAgentPrefetcher
from agentrt.sched.program_table import ProgramTable
from agentrt.tools import report_progress


class Graph:
    entry = "search"

    def steps_to_execution(self, frontier, loop_counts=None):
        return {"writer": 1}

    def expected_remaining_turns(self, frontier, state=None, loop_counts=None):
        return 1.0

    def next_agents(self, step, loop_counts=None):
        return ("writer",)

    def frontier_after(self, step):
        return ["write"]

    def agent_of(self, step):
        return None

    def has_step(self, step):
        return True


class Prompts:
    def prompts_of(self, agents):
        return [[1, 2, 3]] if "writer" in agents else []


def test_remaining_seconds_from_an_eta_or_a_fraction():
    assert remaining_seconds(ToolProgress("p", "t", "s", 0.0, eta_seconds=2.5), 1.0) == 2.5
    assert remaining_seconds(ToolProgress("p", "t", "s", 0.0, fraction=0.25), 1.0) == 3.0   # 1 s for a quarter
    assert remaining_seconds(ToolProgress("p", "t", "s", 0.0), 1.0) is None


def test_the_program_table_takes_the_tools_own_estimate():
    clock = VirtualClock()
    predictor = ToolPausePredictor()
    predictor.set_hint("search", 10.0)
    table = ProgramTable(predictor, clock)
    table.publish(ProgramStarted("p", 0.0, 0.0, graph=Graph()))
    table.publish(ToolStarted("p", "search", "search", 0.0))
    before = table.eta("p", "writer", clock.now())
    assert before > 5.0                                              # the predictor's 10 s hint
    clock.advance(1.0)
    table.publish(ToolProgress("p", "search", "search", 1.0, fraction=0.9, eta_seconds=0.2))
    assert table.entries["p"].paused_until == 1.2
    assert abs(table.eta("p", "writer", 1.0) - 0.2) < 1e-9
    assert table.eta("p", "writer", 5.0) == 0.0                      # overdue: back any moment
    table.publish(ToolEnded("p", "search", "search", 1.3, 1.3))
    assert table.entries["p"].paused_until is None and table.entries["p"].paused_tool is None


def test_almost_done_moves_agentrts_prefetch_up():
    async def main():
        predictor = ToolPausePredictor()
        predictor.set_hint("search", 5.0)
        fetched: list[list[int]] = []
        pre = NextAgentPrefetcher(fetched.append, timed=True, predictor=predictor)
        loop = asyncio.get_running_loop()
        for pid in ("a", "b"):
            pre.publish(ProgramStarted(pid, 0.0, 0.0, graph=Graph(), prompts=Prompts()))
            pre.publish(ToolStarted(pid, "search", "search", loop.time()))
        await asyncio.sleep(0.05)
        assert fetched == []                                         # planned for ~5 s from now
        pre.publish(ToolProgress("a", "search", "search", loop.time(), fraction=0.99, eta_seconds=LEAD_SECONDS / 2))
        pre.publish(ToolProgress("b", "search", "search", loop.time(), eta_seconds=60.0))   # later: plan unchanged
        await asyncio.sleep(0.05)
        assert fetched == [[1, 2, 3]] and pre.requested == 1         # only "a", at once
        pre.publish(ToolProgress("a", "search", "search", loop.time(), eta_seconds=0.0))    # already fetched
        await asyncio.sleep(0.02)
        assert pre.requested == 1
        pre.publish(ToolProgress("b", "search", "search", loop.time(), fraction=0.5))      # as long again as so far (~0.1 s)
        await asyncio.sleep(0.02)
        assert pre.requested == 1
        await asyncio.sleep(0.35)
        assert pre.requested == 2
    arun(main())


class Job(BaseModel):
    out: str = ""


def test_report_progress_in_a_local_tool_reaches_the_user_events_from_a_thread_too():
    @tool
    def sync_work() -> str:
        """Work in a thread."""
        report_progress(0.5, 1.0, "half way")
        return "done"

    @tool
    async def async_work() -> str:
        """Work on the loop."""
        report_progress(eta_seconds=0.1)
        return "done"
    wf = Workflow("job", Job, output="out")
    wf.tool("one", sync_work, {}, output="out")
    wf.tool("two", async_work, {}, output="out")
    wf.sequence("one", "two")
    rec = Recorder()

    async def main():
        async with Runtime(ScriptedEngine(["-"]), on_event=[rec]) as rt:
            return await rt.run(wf, {})
    assert arun(main()).status == "done"
    progress = [(e.data["step"], e.data["fraction"], e.data["eta_seconds"], e.data["message"]) for e in rec.of("tool_progress")]
    assert progress == [("one", 0.5, 1.0, "half way"), ("two", None, 0.1, None)]
    assert report_progress(0.5) is None                              # outside a call: nothing happens
