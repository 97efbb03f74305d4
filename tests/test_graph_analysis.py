"""GraphAnalysis on small compiled workflows: distances to each agent's next turn, who reads a
tool's result, and expected remaining turns, all against values computed by hand."""
from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel

from agentrt.graph import END, Agent, Workflow, append
from agentrt.graph.analysis import GraphAnalysis
from agentrt.tools import tool


class S(BaseModel):
    topic: str = ""
    questions: list[str] = []
    notes: Annotated[list[str], append] = []
    out: str = ""


@tool
def lookup(query: str) -> str:
    """Look a question up."""
    return query


def noop(state):
    return None


def first(state):
    raise AssertionError("routers never run in analysis")


def wf_with(*agents: Agent | str, name="t") -> Workflow:
    return Workflow(name, S, agents=[a if isinstance(a, Agent) else Agent(a) for a in agents])


def llm(wf: Workflow, step: str, agent: str) -> Workflow:
    return wf.llm(step, agent, "{topic}", output="out")


def chain() -> GraphAnalysis:
    """a(A) -> t(tool) -> p(python) -> b(B) -> c(C) -> END"""
    wf = wf_with("A", "B", "C")
    llm(wf, "a", "A")
    wf.tool("t", lookup, {"query": "{topic}"}, output="out")
    wf.python("p", noop)
    llm(wf, "b", "B")
    llm(wf, "c", "C")
    wf.sequence("a", "t", "p", "b", "c")
    return wf.compile().analysis


def fan(researcher: Agent | None = None, expected_items: int = 3) -> GraphAnalysis:
    """plan(P) =fan_out over questions=> [look(tool) -> res(R)] => join write(W) -> END"""
    wf = wf_with("P", researcher or Agent("R"), "W")
    llm(wf, "plan", "P")
    wf.tool("look", lookup, {"query": "{q}"}, output="found")
    wf.llm("res", "R", "{q} {found}", output="notes")
    llm(wf, "write", "W")
    wf.fan_out("plan", over="questions", to="look", join="write", item="q",
               expected_items=expected_items)
    wf.edge("look", "res")
    return wf.compile().analysis


def outer_loop() -> GraphAnalysis:
    """plan(P) -> write(W) -> review(V) -branch-> plan (loop, max 2) | polish(X) -> fmt(py) -> sign(W)"""
    wf = wf_with("P", "W", "V", "X")
    llm(wf, "plan", "P")
    llm(wf, "write", "W")
    llm(wf, "review", "V")
    llm(wf, "polish", "X")
    wf.python("fmt", noop)
    llm(wf, "sign", "W")
    wf.sequence("plan", "write", "review")
    wf.branch("review", first, to=["plan", "polish"], max_loops=2)
    wf.sequence("polish", "fmt", "sign")
    return wf.compile().analysis


def write_review(max_loops=2, weights=None) -> GraphAnalysis:
    """write(W) -> review(V) -branch-> write (loop) | END"""
    wf = wf_with("W", "V")
    llm(wf, "write", "W")
    llm(wf, "review", "V")
    wf.edge("write", "review")
    wf.branch("review", first, to=["write", END], max_loops=max_loops, weights=weights)
    return wf.compile().analysis


# ------------------------------------------------------------------------ steps_to_execution
def test_analysis_property():
    an = chain()
    assert isinstance(an, GraphAnalysis) and an.graph is an.wf.graph


def test_steps_to_execution_along_a_chain():
    an = chain()
    assert an.steps_to_execution(["a"]) == {"A": 0, "B": 3, "C": 4}
    assert an.steps_to_execution(["t"]) == {"B": 2, "C": 3}          # A is done: absent
    assert an.steps_to_execution(["p"]) == {"B": 1, "C": 2}
    assert an.steps_to_execution(["b"]) == {"B": 0, "C": 1}
    assert an.steps_to_execution(["c"]) == {"C": 0}
    assert an.steps_to_execution([END]) == {}
    assert an.steps_to_execution([]) == {}


def test_distances_cover_every_step_and_end():
    an = chain()
    assert an.distances(["a"]) == {"a": 0, "t": 1, "p": 2, "b": 3, "c": 4, END: 5}
    assert an.distances(["a", "b"]) == {"a": 0, "b": 0, "t": 1, "p": 2, "c": 1, END: 2}


def test_steps_to_execution_through_a_fan_out():
    an = fan()
    assert an.steps_to_execution(["plan"]) == {"P": 0, "R": 2, "W": 3}
    assert an.steps_to_execution(["look"]) == {"R": 1, "W": 2}
    assert an.steps_to_execution(["look", "res", "res"]) == {"R": 0, "W": 1}
    assert an.steps_to_execution(["write"]) == {"W": 0}


def test_steps_to_execution_with_a_loop():
    an = outer_loop()
    assert an.steps_to_execution(["plan"]) == {"P": 0, "W": 1, "V": 2, "X": 3}
    # W comes soonest through the loop (plan -> write), else through polish -> fmt -> sign
    assert an.steps_to_execution(["review"]) == {"V": 0, "P": 1, "X": 1, "W": 2}
    assert an.steps_to_execution(["review"], {("review", "plan"): 1}) == {"V": 0, "P": 1, "X": 1, "W": 2}
    # the loop is used up: P is no longer reachable, W only after polish -> fmt
    assert an.steps_to_execution(["review"], {("review", "plan"): 2}) == {"V": 0, "X": 1, "W": 3}
    assert an.steps_to_execution(["review"], {("review", "plan"): 5}) == {"V": 0, "X": 1, "W": 3}
    # counts for other edges do not close this one
    assert an.steps_to_execution(["review"], {("review", "polish"): 9}) == {"V": 0, "P": 1, "X": 1, "W": 2}


def test_steps_to_execution_self_loop():
    wf = wf_with("A", "B")
    llm(wf, "ask", "A")
    llm(wf, "done", "B")
    wf.branch("ask", first, to=["ask", "done"], max_loops=1)
    an = wf.compile().analysis
    assert an.steps_to_execution(["ask"]) == {"A": 0, "B": 1}
    assert an.distances(["ask"], {("ask", "ask"): 1}) == {"ask": 0, "done": 1, END: 2}


# ------------------------------------------------------------------------------ next_agents
def test_next_agents_after_a_tool_skips_python_steps():
    an = chain()
    assert an.next_agents("t") == ("B",)
    assert an.next_agents("p") == ("B",)
    assert an.next_agents("a") == ("B",)         # the step's own agent is not "next"
    assert an.next_agents("c") == ()


def test_next_agents_ties_are_sorted():
    wf = wf_with("zed", "alpha", "mid")
    wf.tool("t", lookup, {"query": "{topic}"}, output="out")
    llm(wf, "y", "zed")
    llm(wf, "x", "alpha")
    wf.python("z", noop)
    llm(wf, "w", "mid")                          # two steps away: not a tie
    llm(wf, "x2", "alpha")                       # the same agent twice at one distance
    wf.branch("t", first, to=["y", "x", "z", "x2"])
    wf.edge("z", "w")
    an = wf.compile().analysis
    assert an.next_agents("t") == ("alpha", "zed")
    assert an.next_agents("z") == ("mid",)


def test_next_agents_in_a_fan_out_and_at_a_loop():
    an = fan()
    assert an.next_agents("look") == ("R",)
    assert an.next_agents("res") == ("W",)       # a branch's end goes to the join
    an = outer_loop()
    assert an.next_agents("review") == ("P", "X")
    assert an.next_agents("review", {("review", "plan"): 2}) == ("X",)
    assert an.next_agents("fmt") == ("W",)


# ---------------------------------------------------------------------- turns_estimate
def test_turns_estimate():
    assert Agent("plain").turns_estimate == 1.0
    assert Agent("tooled", tools=[lookup]).turns_estimate == 2.0
    assert Agent("tooled", tools=[lookup], max_turns=1).turns_estimate == 1.0
    assert Agent("tooled", tools=[lookup], max_turns=8).turns_estimate == 2.0
    assert Agent("hinted", tools=[lookup], expected_turns=3.5).turns_estimate == 3.5
    assert Agent("hinted", expected_turns=0.5).turns_estimate == 0.5


# ------------------------------------------------------------------ expected_remaining_turns
def test_expected_turns_chain():
    an = chain()
    assert an.expected_remaining_turns(["a"]) == pytest.approx(3.0)
    assert an.expected_remaining_turns(["t"]) == pytest.approx(2.0)     # tool and python: 0
    assert an.expected_remaining_turns(["c"]) == pytest.approx(1.0)
    assert an.expected_remaining_turns([END]) == 0.0
    assert an.expected_remaining_turns([]) == 0.0


def test_expected_turns_counts_tool_agents_turns():
    wf = wf_with(Agent("A", tools=[lookup]), Agent("B", tools=[lookup], expected_turns=3.5), "C")
    llm(wf, "a", "A")
    llm(wf, "b", "B")
    llm(wf, "c", "C")
    wf.sequence("a", "b", "c")
    an = wf.compile().analysis
    assert an.expected_remaining_turns(["a"]) == pytest.approx(2 + 3.5 + 1)
    assert an.expected_remaining_turns(["b"]) == pytest.approx(3.5 + 1)


def branchy(weights=None) -> GraphAnalysis:
    """a(A) -branch-> b(B) -> END | c(C) -> d(D) -> END"""
    wf = wf_with("A", "B", "C", "D")
    for step in "abcd":
        llm(wf, step, step.upper())
    wf.branch("a", first, to=["b", "c"], weights=weights)
    wf.edge("c", "d")
    return wf.compile().analysis


@pytest.mark.parametrize("weights, expected", [
    (None, 1 + 0.5 * 1 + 0.5 * 2),
    ({"b": 3, "c": 1}, 1 + 0.75 * 1 + 0.25 * 2),
    ({"b": 3}, 1 + 0.75 * 1 + 0.25 * 2),                  # an unnamed target weighs 1
    ({"b": 1, "c": 0}, 1 + 1),
    ({"b": 0, "c": 0}, 1),                                 # all zero: nothing expected after a
])
def test_expected_turns_weighted_branch(weights, expected):
    assert branchy(weights).expected_remaining_turns(["a"]) == pytest.approx(expected)


def test_expected_turns_bounded_loop():
    # p(loop) = 0.5, max_loops = 2: write runs once, again with p 1/2, a third time with p 1/4;
    # each write is followed by a review: 2 * (1 + 1/2 + 1/4) = 3.5
    an = write_review(max_loops=2)
    assert an.expected_remaining_turns(["write"]) == pytest.approx(3.5)
    assert an.expected_remaining_turns(["review"]) == pytest.approx(2.5)
    # after one loop: 2 * (1 + 1/2) = 3; after two (used up): one write and one review
    assert an.expected_remaining_turns(["write"], loop_counts={("review", "write"): 1}) == pytest.approx(3.0)
    assert an.expected_remaining_turns(["write"], loop_counts={("review", "write"): 2}) == pytest.approx(2.0)
    assert an.expected_remaining_turns(["review"], loop_counts={("review", "write"): 2}) == pytest.approx(1.0)


def test_expected_turns_weighted_loop():
    # p(loop) = 0.8, max_loops = 1: 2 * (1 + 0.8) = 3.6
    an = write_review(max_loops=1, weights={"write": 4, END: 1})
    assert an.expected_remaining_turns(["write"]) == pytest.approx(3.6)


def test_expected_turns_used_up_loop_goes_to_exit():
    """review -branch-> write (loop, p .5) | polish (p .25) | END (p .25), exit=polish."""
    wf = wf_with("W", "V", "X")
    llm(wf, "write", "W")
    llm(wf, "review", "V")
    llm(wf, "polish", "X")
    wf.edge("write", "review")
    wf.branch("review", first, to=["write", "polish", END], max_loops=1, exit="polish",
              weights={"write": 2, "polish": 1, END: 1})
    an = wf.compile().analysis
    used_up = {("review", "write"): 1}
    # the loop's share goes to the exit: 1 + (0.5 + 0.25) * 1
    assert an.expected_remaining_turns(["review"], loop_counts=used_up) == pytest.approx(1.75)
    # from write with the loop unused: W + V + 0.5 * (W + V + 0.75 X) + 0.25 X
    assert an.expected_remaining_turns(["write"]) == pytest.approx(2 + 0.5 * 2.75 + 0.25)


def test_expected_turns_outer_loop_with_tail():
    an = outer_loop()
    # tail polish(X) + sign(W) = 2; one round plan+write+review = 3; loop p .5, max 2:
    # E0 = 3 + .5 E1 + .5 * 2, E1 = 3 + .5 E2 + 1, E2 = 3 + 2 = 5 -> E1 = 6.5, E0 = 7.25
    assert an.expected_remaining_turns(["plan"]) == pytest.approx(7.25)
    assert an.expected_remaining_turns(["plan"], loop_counts={("review", "plan"): 2}) == pytest.approx(5.0)


def test_expected_turns_fan_out_expected_items():
    assert fan().expected_remaining_turns(["plan"]) == pytest.approx(1 + 3 * 1 + 1)
    assert fan(expected_items=5).expected_remaining_turns(["plan"]) == pytest.approx(1 + 5 + 1)
    assert fan(Agent("R", tools=[lookup])).expected_remaining_turns(["plan"]) == pytest.approx(1 + 3 * 2 + 1)
    assert fan(Agent("R", tools=[lookup], expected_turns=4)).expected_remaining_turns(["plan"]) \
        == pytest.approx(1 + 3 * 4 + 1)


def test_expected_turns_fan_out_known_list():
    an = fan()
    four = S(questions=["q1", "q2", "q3", "q4"])
    assert an.expected_remaining_turns(["plan"], state=four) == pytest.approx(1 + 4 + 1)
    assert an.expected_remaining_turns(["plan"], state=S(questions=["q"])) == pytest.approx(1 + 1 + 1)


def test_expected_turns_frontier_inside_a_fan_out():
    an = fan()
    # three branches running: one at its lookup (R still to come), two in their research turn;
    # the join runs once after them
    assert an.expected_remaining_turns(["look", "res", "res"]) == pytest.approx(1 + 1 + 1 + 1)
    assert an.expected_remaining_turns(["res"]) == pytest.approx(1 + 1)
    tooled = fan(Agent("R", tools=[lookup]))
    assert tooled.expected_remaining_turns(["look", "res", "res"]) == pytest.approx(2 + 2 + 2 + 1)
    # the state's list does not matter once the branches are running
    assert an.expected_remaining_turns(["look"], state=S(questions=["a"] * 10)) == pytest.approx(2)


def test_expected_turns_loop_inside_a_fan_out_branch():
    """plan(P) => [res(R) -> chk(C) -branch-> res (loop, max 1) | write] => write(W)"""
    wf = wf_with("P", "R", "C", "W")
    llm(wf, "plan", "P")
    wf.llm("res", "R", "{q}", output="notes")
    wf.llm("chk", "C", "{q}", output="notes")
    llm(wf, "write", "W")
    wf.fan_out("plan", over="questions", to="res", join="write", item="q", expected_items=2)
    wf.edge("res", "chk")
    wf.branch("chk", first, to=["res", "write"], max_loops=1)
    cw = wf.compile()
    assert cw.loop_edges == {("chk", "res")} and cw.body_of == {"res": "plan", "chk": "plan"}
    # a branch: R + C + .5 (R + C) = 3; two branches, plus P and W
    assert cw.analysis.expected_remaining_turns(["plan"]) == pytest.approx(1 + 2 * 3 + 1)
    assert cw.analysis.steps_to_execution(["chk"]) == {"C": 0, "R": 1, "W": 1}
