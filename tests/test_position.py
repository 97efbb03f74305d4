"""A program's position as data: the walker advances an explicit record (frontier, loop counts,
fan-out lanes with their items and writes, per-agent conversations) that round-trips through JSON.
Stopping a program after step k and rebuilding it from that record runs it to the same end as an
uninterrupted run (tiny model, greedy), for every k, inside fan-outs and bounded loops too."""
from __future__ import annotations

import asyncio
import json
from typing import Annotated

import pytest
from pydantic import BaseModel

from agentrt import END, Agent, Runtime, Workflow, append
from agentrt.runtime.position import Lane, Position
from runtime_helpers import P


class Survey(BaseModel):
    topic: str = "honeybees"
    plan: str = ""
    topics: list[str] = ["wax", "dance", "hive"]
    notes: Annotated[list[str], append] = []
    report: str = ""
    rounds: int = 0


def survey_workflow():
    wf = Workflow("survey", Survey, output="report")
    wf.llm("plan", Agent("planner", params=P(5)), "Plan a survey of {topic}.", output="plan")
    wf.python("split", lambda s: None)
    worker = Agent("worker", params=P(4))
    wf.llm("draft", worker, "Draft a note on {t} for {plan}.", output="draft")
    wf.llm("polish", worker, "Polish: {draft}", output="notes", params=P(3))
    wf.llm("merge", Agent("merger", params=P(5)), "Merge {notes}.", output="report")
    wf.python("count", lambda s: {"rounds": s.rounds + 1})
    wf.edge("plan", "split")
    wf.fan_out("split", over="topics", to="draft", join="merge", item="t")
    wf.edge("draft", "polish")
    wf.edge("merge", "count")
    wf.branch("count", lambda s: "merge", to=["merge", END], max_loops=1)
    return wf.compile()


async def run_whole(engine, wf):
    async with Runtime(engine, policy=None) as rt:
        return await rt.run(wf)


async def stop_after(engine, wf, k: int) -> tuple[str, list[str]]:
    """Run until the k-th step ends, take the program's snapshot as JSON there, cancel it."""
    taken: list[str] = []
    steps: list[str] = []

    async def main():
        async with Runtime(engine, policy=None) as rt:
            program = None

            def at_step_end(event):
                if event.event == "step_end" and not taken:
                    steps.append(event.data["step"])
                    if len(steps) == k:
                        taken.append(json.dumps(program.snapshot()))
                        program.cancel()
            rt.add_sink(at_step_end)
            program = rt.submit(wf)
            result = await program.result()
            assert result.status == "cancelled"
    await main()
    return taken[0], steps


async def resume(engine, wf, snapshot: str):
    async with Runtime(engine, policy=None) as rt:
        return await rt.restore(wf, json.loads(snapshot)).result()


def test_position_round_trips_through_json():
    pos = Position("split", {("count", "merge"): 1},
                   [Lane("split[0]", "polish", {"t": "wax", "draft": "d"}, [("notes", "n0")], {("a", "b"): 2}),
                    Lane("split[1]", "merge", {"t": "dance"})],
                   {("planner", ""): [{"role": "user", "content": "hi"}]}, steps=4)
    back = Position.from_json(pos.to_json())
    assert back == pos and back.frontier() == ["polish", "merge"]
    with pytest.raises(TypeError, match="JSON-able"):
        Position("x", lanes=[Lane("f[0]", "y", {"t": object()})]).to_dict()


def test_stopping_after_any_step_and_restoring_ends_like_an_uninterrupted_run(make_engine):
    wf = survey_workflow()
    engine = make_engine(kv_cache_tokens=4096)
    whole = asyncio.run(run_whole(engine, wf))
    assert whole.status == "done", whole.error
    total = whole.steps
    assert total == 1 + 1 + 3 * 2 + 2 * 2                      # plan, split, 3 lanes x 2, (merge, count) x 2
    for k in range(1, total):
        snapshot, steps = asyncio.run(stop_after(engine, wf, k))
        data = json.loads(snapshot)
        assert data["position"]["steps"] == k
        inside_fan = data["position"]["lanes"] is not None
        assert inside_fan == (2 <= k <= 8), (k, steps)
        resumed = asyncio.run(resume(engine, wf, snapshot))
        assert resumed.status == "done", (k, resumed.error)
        assert resumed.state == whole.state, (k, steps[-1])
        assert resumed.steps == total, k                      # counts carry over: no step done twice


def test_restore_refuses_another_workflows_snapshot(make_engine):
    engine = make_engine(kv_cache_tokens=1024)
    other = Workflow("other", Survey)
    other.llm("plan", Agent("planner", params=P(2)), "x", output="plan")
    snapshot = {"workflow": "survey", "program_id": "p", "state": {}, "position": Position("plan").to_dict()}

    async def main():
        async with Runtime(engine, policy=None) as rt:
            with pytest.raises(ValueError, match="snapshot is of workflow 'survey', not 'other'"):
                rt.restore(other, snapshot)
            with pytest.raises(ValueError, match="does not have"):
                rt.restore(survey_workflow(), {**snapshot, "position": Position("nowhere").to_dict()})
    asyncio.run(main())
