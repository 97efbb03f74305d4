"""ProgramTable: the per-program view the KV policies read, built from runtime events.

Synthetic typed events (agentrt.sched.events, with the compiled workflow's analysis as the
program graph) drive it through a small workflow, plan(llm) -> lookup(tool) -> write(llm) ->
review(llm); then one real run on the tiny engine under `policy="kvflow"`."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated

import pytest
from pydantic import BaseModel

from agentrt import END, Agent, Runtime, Workflow, append, tool
from agentrt.sched.events import ProgramStarted
from agentrt.sched.predictor import ToolPausePredictor
from agentrt.sched.program_table import INF, ProgramEntry, ProgramTable
from runtime_helpers import P, arun, sched_event


# ------------------------------------------------------------------------------------------ fixtures
class Essay(BaseModel):
    topic: str = "bees"
    plan: str = ""
    facts: str = ""
    draft: str = ""
    verdict: str = ""


@tool(expected_duration=2.0)
def lookup_facts(query: str) -> str:
    """Look facts up."""
    return f"facts about {query}"


def essay_workflow(*, loop: bool = False, params=None):
    wf = Workflow("essay", Essay)
    wf.llm("plan", Agent("planner", params=params or P(4)), "Plan an essay on {topic}.", output="plan")
    wf.tool("lookup", lookup_facts, {"query": "{topic}"}, output="facts")
    wf.llm("write", Agent("writer", params=params or P(4)), "Write: {plan} {facts}", output="draft")
    wf.llm("review", Agent("reviewer", params=params or P(4)), "Review: {draft}", output="verdict")
    wf.sequence("plan", "lookup", "write")
    if loop:
        wf.edge("write", "review")
        wf.branch("review", lambda s: "write", to=["write", END], max_loops=1)
    else:
        wf.edge("write", "review")
    return wf.compile()


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def now(self) -> float:
        return self.t


class Harness:
    """A ProgramTable fed typed events, with a helper that builds them from short keyword forms."""

    def __init__(self, wf=None, predictor=None):
        self.wf = wf or essay_workflow()
        self.clock = FakeClock()
        self.table = ProgramTable(predictor, clock=self.clock)
        self.loops: Counter = Counter()              # the program's loop counts, as Program keeps them

    def start(self, pid: str = "p", submitted: float = 50.0) -> ProgramEntry:
        hints = {t.name: t.expected_duration for t in self.wf.tools.values() if t.expected_duration}
        self.table.publish(ProgramStarted(pid, submitted, self.clock.t, self.wf.analysis, None, hints))
        return self.table.entries[pid]

    def emit(self, pid: str, event: str, /, **d) -> None:
        self.table.publish(sched_event(pid, event, self.clock.t, self.loops, **d))

    def entry(self, pid: str = "p") -> ProgramEntry:
        return self.table.entries[pid]


# ------------------------------------------------------------------------------------------ events
def test_program_start_sets_the_entry_from_the_entry_step():
    h = Harness()
    e = h.start("p", submitted=42.0)
    assert e.program_id == "p" and e.arrival == 42.0 and not e.finished
    assert e.steps_to_execution == {"planner": 0, "writer": 2, "reviewer": 3}
    assert e.remaining_turns == pytest.approx(3.0)
    assert e.paused_tool is None and e.pin_until is None and e.context_tokens == 0
    assert h.table.distance("p", "planner") == 0 and h.table.distance("p", "writer") == 2
    assert h.table.distance("p", "nobody") == INF
    assert h.table.distance("unknown-program", "planner") == INF
    # the DSL's expected_duration became the predictor's hint for the tool
    assert h.table.predictor.hint("lookup_facts") == 2.0


def test_an_existing_hint_is_not_overwritten_by_the_dsl():
    pred = ToolPausePredictor()
    pred.set_hint("lookup_facts", 7.0)
    h = Harness(predictor=pred)
    h.start()
    assert pred.hint("lookup_facts") == 7.0


def test_steps_to_execution_follows_the_graph_step_by_step():
    h = Harness()
    h.start()
    seen = []

    def snap():
        seen.append((h.entry().steps_to_execution, h.entry().remaining_turns))

    h.emit("p", "step_start", step="plan", kind="llm", agent="planner")
    snap()
    h.emit("p", "step_end", step="plan")                     # between steps: points to lookup
    snap()
    h.emit("p", "step_start", step="lookup", kind="tool", tool="lookup_facts")
    snap()
    h.emit("p", "step_end", step="lookup")                   # between steps: points to write
    snap()
    h.emit("p", "step_start", step="write", kind="llm", agent="writer")
    snap()
    h.emit("p", "step_end", step="write")
    snap()
    h.emit("p", "step_start", step="review", kind="llm", agent="reviewer")
    snap()
    h.emit("p", "step_end", step="review")                   # next is END: nothing left
    snap()
    assert seen == [
        ({"planner": 0, "writer": 2, "reviewer": 3}, 3.0),
        ({"writer": 1, "reviewer": 2}, 2.0),
        ({"writer": 1, "reviewer": 2}, 2.0),
        ({"writer": 0, "reviewer": 1}, 2.0),
        ({"writer": 0, "reviewer": 1}, 2.0),
        ({"reviewer": 0}, 1.0),
        ({"reviewer": 0}, 1.0),
        ({}, 0.0),
    ]
    # a planner that can never run again is "never": distance inf
    assert h.table.distance("p", "planner") == INF
    assert not h.entry().finished                            # only program_end finishes it


def test_branch_source_between_steps_keeps_the_branch_as_frontier():
    """Between a branch's source and its target the frontier stays at the source (its targets
    one step away); at step_start of the target the frontier moves there."""
    h = Harness(essay_workflow(loop=True))
    h.start()
    for step in ("plan", "lookup", "write", "review"):
        h.emit("p", "step_start", step=step)
        h.emit("p", "step_end", step=step)
    e = h.entry()
    assert e.steps_to_execution["writer"] == 1
    h.emit("p", "step_start", step="write")
    assert h.entry().steps_to_execution == {"writer": 0, "reviewer": 1}


def test_a_used_up_loop_no_longer_counts():
    """review -> write loops at most once: once the program took the loop (its loop counts say
    so), the writer is no longer expected after review, and the remaining turns drop."""
    h = Harness(essay_workflow(loop=True))
    h.start()
    for step in ("plan", "lookup", "write", "review"):
        h.emit("p", "step_start", step=step)
        h.emit("p", "step_end", step=step)
    first = h.entry()
    assert first.steps_to_execution == {"reviewer": 0, "writer": 1}
    h.loops[("review", "write")] += 1                         # what Program._route does
    h.emit("p", "step_start", step="write")
    h.emit("p", "step_end", step="write")
    h.emit("p", "step_start", step="review")
    e = h.entry()
    assert e.steps_to_execution == {"reviewer": 0}
    assert e.remaining_turns == pytest.approx(1.0)
    assert h.table.distance("p", "writer") == INF


class Survey(BaseModel):
    topics: list[str] = ["a", "b", "c"]
    notes: Annotated[list[str], append] = []
    report: str = ""


def test_fan_out_lanes_share_the_frontier_until_the_last_one_ends():
    wf = Workflow("survey", Survey)
    wf.python("split", lambda s: None)
    wf.llm("work", Agent("worker"), "Note on {t}", output="notes")
    wf.llm("merge", Agent("merger"), "Merge {notes}", output="report")
    wf.fan_out("split", over="topics", to="work", join="merge", item="t", expected_items=3)
    h = Harness(wf.compile())
    h.start()
    assert h.entry().steps_to_execution == {"worker": 1, "merger": 2}
    assert h.entry().remaining_turns == pytest.approx(3 + 1)
    h.emit("p", "step_start", step="split")
    h.emit("p", "step_end", step="split")                    # between: still at the fan-out source
    assert h.entry().steps_to_execution == {"worker": 1, "merger": 2}
    for _ in range(3):
        h.emit("p", "step_start", step="work")
    assert h.entry().steps_to_execution == {"worker": 0, "merger": 1}
    assert h.entry().remaining_turns == pytest.approx(3 + 1)
    h.emit("p", "step_end", step="work")
    h.emit("p", "step_end", step="work")
    assert h.entry().steps_to_execution == {"worker": 0, "merger": 1}
    assert h.entry().remaining_turns == pytest.approx(1 + 1)
    h.emit("p", "step_end", step="work")                     # the last lane: on to the join
    assert h.entry().steps_to_execution == {"merger": 0}
    assert h.entry().remaining_turns == pytest.approx(1)


def test_tool_pause_is_set_cleared_and_observed():
    h = Harness()
    h.start()
    h.emit("p", "step_start", step="plan")
    h.emit("p", "step_end", step="plan")
    h.emit("p", "step_start", step="lookup")
    h.clock.t = 200.0
    h.emit("p", "tool_start", step="lookup", tool="lookup_facts", expected_duration=2.0)
    e = h.entry()
    assert e.paused_tool == "lookup_facts" and e.paused_since == 200.0
    assert e.steps_to_execution == {"writer": 1, "reviewer": 2}      # the pause keeps the frontier
    h.clock.t = 201.5
    h.emit("p", "tool_end", step="lookup", tool="lookup_facts", duration=1.5, attempts=1, error=None)
    e = h.entry()
    assert e.paused_tool is None and e.paused_since is None
    assert h.table.predictor.samples("lookup_facts") == [1.5]
    # a failed call clears the pause but teaches the predictor nothing
    h.emit("p", "tool_start", step="lookup", tool="lookup_facts")
    h.emit("p", "tool_end", step="lookup", tool="lookup_facts", duration=30.0, attempts=3,
           error="TimeoutError")
    assert h.entry().paused_tool is None
    assert h.table.predictor.samples("lookup_facts") == [1.5]


def test_tool_end_observes_the_tool_that_ended():
    """Two tools of one program running at once (fan-out lanes): each tool_end's duration is
    recorded for its own tool, not for whichever tool the entry happens to show as paused."""
    h = Harness()
    h.start()
    h.emit("p", "tool_start", tool="lookup_facts")
    h.emit("p", "tool_start", tool="other_tool")
    h.emit("p", "tool_end", tool="lookup_facts", duration=0.25, error=None)
    assert h.table.predictor.samples("lookup_facts") == [0.25]
    assert h.table.predictor.samples("other_tool") == []
    h.emit("p", "tool_end", tool="other_tool", duration=4.0, error=None)
    assert h.table.predictor.samples("other_tool") == [4.0]
    assert h.table.predictor.samples("lookup_facts") == [0.25]


def test_a_program_stays_paused_while_any_of_its_lanes_waits_on_a_tool():
    h = Harness()
    h.start()
    h.emit("p", "tool_start", tool="lookup_facts")
    h.clock.t += 1
    h.emit("p", "tool_start", tool="other_tool")
    h.emit("p", "tool_end", tool="lookup_facts", duration=1.0, error=None)
    assert h.entry().paused_tool == "other_tool" and h.entry().paused_since == h.clock.t
    h.emit("p", "tool_end", tool="other_tool", duration=1.0, error=None)
    assert h.entry().paused_tool is None


def test_llm_events_set_context_tokens_step_seconds_and_release_a_pin():
    h = Harness()
    h.start()
    h.table.pin("p", 999.0)
    assert h.entry().pin_until == 999.0
    h.clock.t = 300.0
    h.emit("p", "llm_start", step="plan", agent="planner", request_id="p/plan/0", tokens_in=120, turn=0)
    assert h.entry().pin_until is None                        # the program is back
    h.clock.t = 303.0
    h.emit("p", "llm_end", step="plan", agent="planner", request_id="p/plan/0", tokens_in=120,
           tokens_out=30, cached_tokens=0, turn=0)
    assert h.entry().context_tokens == 150
    assert h.table.step_seconds == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    # an llm_end with no llm_start seen does not move the mean (but still sets the context)
    h.emit("p", "llm_end", request_id="p/x/9", tokens_in=10, tokens_out=5)
    assert h.table.step_seconds == pytest.approx(1.2) and h.entry().context_tokens == 15


def test_a_turn_cut_off_by_the_end_of_its_program_is_forgotten():
    h = Harness()
    h.start("p")
    h.start("q")
    h.emit("p", "llm_start", request_id="p/plan/0")
    h.emit("q", "llm_start", request_id="q/plan/0")
    h.emit("p", "program_end", status="cancelled")            # no llm_end ever comes for p's turn
    assert list(h.table._llm_started) == [("q", "q/plan/0")]


def test_program_end_finishes_the_entry():
    h = Harness()
    h.start()
    h.table.pin("p", 999.0)
    h.emit("p", "tool_start", tool="lookup_facts")
    h.emit("p", "program_end", status="done", error=None)
    e = h.entry()
    assert e.finished and e.steps_to_execution == {} and e.remaining_turns == 0.0
    assert e.pin_until is None and e.paused_tool is None
    assert e.arrival == 50.0
    for agent in ("planner", "writer", "reviewer"):
        assert h.table.distance("p", agent) == INF
        assert h.table.eta("p", agent, h.clock.t) == INF
    # later events for a finished program change nothing
    h.table.pin("p", 5.0)
    h.emit("p", "step_start", step="write")
    h.emit("p", "llm_end", request_id="r", tokens_in=1, tokens_out=1)
    assert h.entry() == e


def test_events_of_unknown_programs_are_ignored():
    h = Harness()
    h.emit("ghost", "step_start", step="plan")                # never started
    h.emit("ghost", "tool_start", tool="lookup_facts")
    h.emit("ghost", "program_end", status="done")
    assert h.table.entries == {}


def test_entries_are_replaced_never_mutated():
    h = Harness()
    first = h.start()
    h.emit("p", "step_start", step="plan")
    h.emit("p", "step_end", step="plan")
    assert h.entry() is not first
    assert first.steps_to_execution == {"planner": 0, "writer": 2, "reviewer": 3}
    with pytest.raises(Exception):
        first.paused_tool = "x"                               # frozen


# ------------------------------------------------------------------------------------------ eta
def paused_at_lookup(h: Harness, at: float = 200.0) -> None:
    h.start()
    for kind, step in (("step_start", "plan"), ("step_end", "plan"), ("step_start", "lookup")):
        h.emit("p", kind, step=step)
    h.clock.t = at
    h.emit("p", "tool_start", step="lookup", tool="lookup_facts")


def test_eta_while_paused_is_the_predicted_rest_of_the_tool_plus_turns_to_go():
    pred = ToolPausePredictor(prior_weight=0)
    pred.observe_many("lookup_facts", [1.0, 3.0])
    h = Harness(predictor=pred)
    paused_at_lookup(h, at=200.0)
    h.table.step_seconds = 2.0
    now = 200.5
    wait = pred.expected_remaining("lookup_facts", 0.5)
    assert wait == pytest.approx(1.5)                         # mean of 0.5 and 2.5
    # writer reads right after the tool; reviewer one writer turn later
    assert h.table.eta("p", "writer", now) == pytest.approx(wait)
    assert h.table.eta("p", "reviewer", now) == pytest.approx(wait + 1 * 2.0)
    assert h.table.eta("p", "planner", now) == INF           # never again
    # later in the pause, only the long call is still possible
    assert h.table.eta("p", "writer", 202.0) == pytest.approx(1.0)


def test_eta_of_an_overdue_tool_grows_with_its_age():
    pred = ToolPausePredictor(prior_weight=0)
    pred.observe_many("lookup_facts", [1.0, 3.0])
    h = Harness(predictor=pred)
    paused_at_lookup(h, at=200.0)
    h.table.step_seconds = 2.0
    # 10 s in: past every known duration, the guess is "as long again"
    assert h.table.eta("p", "writer", 210.0) == pytest.approx(10.0)
    assert h.table.eta("p", "reviewer", 210.0) == pytest.approx(12.0)
    assert h.table.eta("p", "writer", 220.0) > h.table.eta("p", "writer", 210.0)


def test_eta_with_the_dsl_hint_only():
    """No observation yet: the pause is predicted from the DSL's expected_duration (the prior
    centred on the hint)."""
    h = Harness()
    paused_at_lookup(h, at=200.0)
    pred = h.table.predictor
    assert pred.samples("lookup_facts") == []
    expected = pred.expected_remaining("lookup_facts", 0.0)
    assert expected == pytest.approx(pred.mean("lookup_facts"))
    assert 1.0 < expected < 4.0                               # around the 2 s hint
    assert h.table.eta("p", "writer", 200.0) == pytest.approx(expected)


def test_eta_without_a_pause_counts_turns_only():
    h = Harness()
    h.start()
    h.table.step_seconds = 0.5
    assert h.table.eta("p", "planner", 0.0) == 0.0
    assert h.table.eta("p", "writer", 0.0) == pytest.approx(1 * 0.5)
    assert h.table.eta("p", "reviewer", 0.0) == pytest.approx(2 * 0.5)


# ------------------------------------------------------------------------------------------ a real run
@tool(expected_duration=0.05)
async def slow_lookup(query: str) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(0.05)
    return f"facts: {query}"


def test_real_run_under_kvflow_fills_and_finishes_the_table(make_engine):
    wf = Workflow("essay_real", Essay)
    wf.llm("plan", Agent("planner", params=P(3)), "Plan {topic}.", output="plan")
    wf.tool("lookup", slow_lookup, {"query": "{topic}"}, output="facts")
    wf.llm("write", Agent("writer", params=P(3)), "Write {plan} {facts}", output="draft")
    wf.sequence("plan", "lookup", "write")
    engine = make_engine(kv_cache_tokens=2048)
    samples: dict[str, ProgramEntry] = {}

    async def main():
        async with Runtime(engine, policy="kvflow") as rt:
            table = rt.table
            assert isinstance(table, ProgramTable) and rt.scheduler.table is table

            def sample(event):                                # user sinks hear events after the scheduler
                if event.event == "tool_start":
                    samples[event.program] = table.entries[event.program]
            rt.sinks.append(sample)
            results = await rt.run_many(wf, [{"topic": t} for t in ("bees", "ants", "wasps")])
            return results, table

    results, table = arun(main())
    assert [r.status for r in results] == ["done"] * 3, [r.error for r in results]
    pids = {r.program_id for r in results}
    assert set(table.entries) == pids
    assert all(e.finished for e in table.entries.values())
    assert all(table.distance(pid, "writer") == INF for pid in pids)
    assert set(samples) == pids
    for pid, e in samples.items():
        assert e.paused_tool == "slow_lookup" and e.paused_since is not None
        assert e.steps_to_execution == {"writer": 1}
        assert e.context_tokens > 0                           # the planner's turn was seen
        assert not e.finished
    assert len(table.predictor.samples("slow_lookup")) == 3
    assert all(0.04 <= s < 1.0 for s in table.predictor.samples("slow_lookup"))
    assert table.step_seconds != 1.0                          # LLM turns were timed
