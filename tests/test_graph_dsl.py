"""The workflow DSL (agentrt.graph): compile-time validation with fix-it messages, definition-time
errors, the compiled Agent Step Graph, and the typed-state helpers. No model, no engine."""
from __future__ import annotations

import operator
from typing import Annotated, Optional

import networkx as nx
import pytest
from pydantic import BaseModel

from agentrt.graph import END, Agent, StateError, Workflow, WorkflowError, append
from agentrt.graph.state import apply_update, reducers_of, render, template_fields
from agentrt.tools import tool


# ----------------------------------------------------------------------------------- fixtures
class S(BaseModel):
    topic: str = ""
    questions: list[str] = []
    notes: Annotated[list[str], append] = []
    scores: Annotated[list[int], operator.add] = []
    draft: str = ""
    verdict: str = ""
    count: int = 0
    maybe: Optional[str] = None


class Sub(BaseModel):
    a: int = 1
    b: str = "x"


class WithModel(BaseModel):
    sub: Sub = Sub()
    tags: list[str] = []


@tool
def lookup(query: str) -> str:
    """Look a question up."""
    return f"found: {query}"


@tool
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


def route_review(state) -> str:
    return "write" if "REDO" in state.verdict else "publish"


def noop(state):
    return None


def agents():
    return (Agent("planner", "You plan."), Agent("researcher", "You research.", tools=[lookup]),
            Agent("writer", "You write."), Agent("reviewer", "You review."))


def research_team() -> Workflow:
    planner, researcher, writer, reviewer = agents()
    wf = Workflow("research", S, output="draft")
    wf.llm("plan", planner, "Topic: {topic}\nList questions.", output="questions",
           parse=lambda text: text.splitlines())
    wf.tool("lookup", lookup, {"query": "{question}"}, output="found")       # branch-local name
    wf.llm("research", researcher, "Question: {question}\nFound: {found}", output="notes")
    wf.llm("write", writer, "Notes:\n{notes}", output="draft")
    wf.llm("review", reviewer, "Review:\n{draft}", output="verdict")
    wf.python("publish", noop)
    wf.fan_out("plan", over="questions", to="lookup", join="write", item="question")
    wf.edge("lookup", "research")
    wf.edge("write", "review")
    wf.branch("review", route_review, to=["write", "publish"], max_loops=2)
    return wf


def problems_of(wf: Workflow) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        wf.compile()
    err = info.value
    for p in err.problems:                         # the message lists every problem
        assert p in str(err)
    assert repr(wf.name) in str(err)
    return err.problems


def one_problem(wf: Workflow) -> str:
    problems = problems_of(wf)
    assert len(problems) == 1, problems
    return problems[0]


def simple(*names: str, state=S) -> Workflow:
    """A chain of python steps."""
    wf = Workflow("t", state)
    for n in names:
        wf.python(n, noop)
    wf.sequence(*names)
    return wf


# ------------------------------------------------------------------------- references
def test_unknown_agent_by_name():
    wf = Workflow("t", S)
    wf.add_agent(Agent("writer"))
    wf.llm("ask", "ghost", "Topic: {topic}", output="draft")
    p = one_problem(wf)
    assert "step 'ask'" in p and "unknown agent 'ghost'" in p
    assert "pass the Agent object or add it with add_agent()" in p and "agents: writer" in p


def test_agent_registered_by_name_later_is_fine():
    wf = Workflow("t", S)
    wf.llm("ask", "writer", "Topic: {topic}", output="draft")
    wf.add_agent(Agent("writer"))
    assert wf.compile().steps["ask"].agent == "writer"


def test_unknown_tool():
    wf = Workflow("t", S, tools=[shout])
    wf.tool("call", "lookup", {"query": "{topic}"}, output="draft")
    p = one_problem(wf)
    assert "step 'call'" in p and "unknown tool 'lookup'" in p
    assert "pass the function or add it with add_tool()" in p and "tools: shout" in p


def test_agent_tools_are_registered_with_the_workflow():
    wf = Workflow("t", S, agents=[Agent("researcher", tools=[lookup])])
    wf.tool("call", "lookup", {"query": "{topic}"}, output="draft")
    assert wf.compile().tools["lookup"] is wf.tools["lookup"]


@pytest.mark.parametrize("where", ["edge", "branch", "fan_out_to", "fan_out_join", "start"])
def test_unknown_step_near_miss(where):
    wf = Workflow("t", S)
    wf.python("plan", noop).python("write", noop).python("other", noop)
    if where == "edge":
        wf.edge("plan", "wirte")
        expect = "edge 'plan' -> 'wirte'"
    elif where == "branch":
        wf.branch("plan", lambda s: "write", to=["wirte", "other"])
        expect = "branch after 'plan'"
    elif where == "fan_out_to":
        wf.fan_out("plan", over="questions", to="wirte", join="other")
        expect = "fan-out after 'plan'"
    elif where == "fan_out_join":
        wf.fan_out("plan", over="questions", to="other", join="wirte")
        expect = "fan-out after 'plan'"
    else:
        wf.start("wirte")
        expect = "start()"
    problems = problems_of(wf)
    assert len(problems) == 1, problems
    assert expect in problems[0]
    assert "unknown step 'wirte'" in problems[0] and "did you mean 'write'?" in problems[0]


def test_unknown_step_far_miss_lists_the_steps():
    wf = simple("a", "b")
    wf.edge("b", "zzzzzz")
    p = one_problem(wf)
    assert "unknown step 'zzzzzz'" in p and "did you mean" not in p
    assert "declare it (steps: a, b)" in p


def test_unreachable_step():
    wf = simple("a", "b")
    wf.python("orphan", noop)
    p = one_problem(wf)
    assert "step 'orphan' is unreachable from the start 'a'" in p
    assert "connect it with edge()/branch()/fan_out() or remove it" in p


def test_start_chooses_the_entry():
    wf = simple("a", "b")
    wf.start("b")
    assert "a" in one_problem(wf) and "unreachable from the start 'b'" in one_problem(wf)
    wf.start("a")
    assert wf.compile().entry == "a"


# ------------------------------------------------------------------------------- loops
def test_edge_cycle_is_an_unbounded_loop():
    wf = simple("a", "b", "c")
    wf.edge("c", "a")
    p = one_problem(wf)
    assert "form a loop with no bound" in p
    assert all(f"'{n}'" not in p and n in p for n in "abc")     # the steps of the cycle, unquoted
    assert "close it with branch(..., max_loops=N) instead of edge()" in p


def test_self_edge_is_an_unbounded_loop():
    wf = simple("a")
    wf.edge("a", "a")
    assert "a -> a form a loop with no bound" in one_problem(wf)


def test_branch_back_edge_needs_max_loops():
    wf = simple("write", "review")
    wf.python("publish", noop)
    wf.branch("review", route_review, to=["write", "publish"])
    p = one_problem(wf)             # one problem, not also an "instead of edge()" one
    assert "branch after 'review' loops back to 'write' with no bound" in p
    assert "pass max_loops=N" in p


def test_branch_self_loop_needs_max_loops_and_is_a_loop_edge():
    wf = Workflow("t", S).python("ask", noop).python("done", noop)
    wf.branch("ask", lambda s: "ask", to=["ask", "done"])
    assert "branch after 'ask' loops back to 'ask' with no bound" in one_problem(wf)
    wf = Workflow("t", S).python("ask", noop).python("done", noop)
    wf.branch("ask", lambda s: "ask", to=["ask", "done"], max_loops=3)
    assert wf.compile().loop_edges == {("ask", "ask")}


def test_looping_branch_with_several_forward_targets_needs_exit():
    wf = simple("write", "review")
    wf.python("publish", noop).python("archive", noop)
    wf.branch("review", route_review, to=["write", "publish", "archive"], max_loops=2)
    p = one_problem(wf)
    assert "branch after 'review' loops" in p
    assert "with exit= (one of publish, archive)" in p
    wf.branches.clear()
    wf.branch("review", route_review, to=["write", "publish", "archive"], max_loops=2, exit="archive")
    assert wf.compile().loop_edges == {("review", "write")}


def test_looping_branch_to_end_and_a_step_needs_exit():
    wf = simple("write", "review")
    wf.python("publish", noop)
    wf.branch("review", route_review, to=["write", "publish", END], max_loops=1)
    assert "with exit= (one of publish, __end__)" in one_problem(wf)


def test_exit_that_loops_back():
    wf = simple("write", "review")
    wf.python("publish", noop)
    wf.branch("review", route_review, to=["write", "publish"], max_loops=2, exit="write")
    p = one_problem(wf)
    assert "branch after 'review': exit 'write' loops back too" in p
    assert "pick a target that leaves the loop" in p


def test_exit_must_be_a_target():
    wf = simple("write", "review")
    wf.python("publish", noop).python("archive", noop)
    wf.edge("publish", "archive")
    wf.branch("review", route_review, to=["write", "publish"], max_loops=2, exit="archive")
    p = one_problem(wf)
    assert "branch after 'review': exit 'archive' must be one of its targets" in p


def test_branch_inside_a_loop_is_not_a_loop():
    """A conditional inside a loop body: both targets lead back to it through the outer loop,
    but only the outer branch's edge back to `plan` is a loop edge."""
    wf = simple("plan", "check")
    wf.python("fast", noop).python("slow", noop).python("judge", noop)
    wf.branch("check", lambda s: "fast", to=["fast", "slow"])
    wf.edge("fast", "judge").edge("slow", "judge")
    wf.branch("judge", lambda s: END, to=["plan", END], max_loops=3)
    assert wf.compile().loop_edges == {("judge", "plan")}


def test_nested_loops():
    """An inner write/review loop inside an outer plan/judge loop: the inner branch's way out
    (judge) reaches it again only through the outer loop, so it is not a back edge."""
    wf = simple("plan", "write", "review")
    wf.python("judge", noop)
    wf.branch("review", lambda s: "judge", to=["write", "judge"], max_loops=2)
    wf.branch("judge", lambda s: END, to=["plan", END], max_loops=1)
    cw = wf.compile()
    assert cw.loop_edges == {("review", "write"), ("judge", "plan")}


@pytest.mark.parametrize("order", [["x", "y"], ["y", "x"]])
def test_loop_entered_in_its_middle(order):
    """a chooses x or y; x -> y; y retries x. The loop x -> y -> x has no single entry, whichever
    way a's targets are listed; y's edge back to x is what bounds it."""
    wf = Workflow("t", S).python("a", noop).python("x", noop).python("y", noop)
    wf.branch("a", lambda s: "x", to=order)
    wf.edge("x", "y")
    wf.branch("y", lambda s: END, to=["x", END], max_loops=2)
    assert wf.compile().loop_edges == {("y", "x")}


def test_nested_loops_declared_in_any_order():
    wf = Workflow("t", S).python("judge", noop).python("review", noop)
    wf.python("write", noop).python("plan", noop)
    wf.start("plan")
    wf.branch("judge", lambda s: END, to=[END, "plan"], max_loops=1)
    wf.branch("review", lambda s: "judge", to=["judge", "write"], max_loops=2)
    wf.edge("write", "review").edge("plan", "write")
    assert wf.compile().loop_edges == {("review", "write"), ("judge", "plan")}


def test_inner_loop_without_bound_inside_a_bounded_one():
    wf = simple("plan", "write", "review")
    wf.python("judge", noop)
    wf.branch("review", lambda s: "judge", to=["write", "judge"])
    wf.branch("judge", lambda s: END, to=["plan", END], max_loops=1)
    assert "branch after 'review' loops back to 'write' with no bound" in one_problem(wf)


def test_branch_inside_a_loop_entered_twice():
    """e chooses check or fast; check chooses fast or slow; both meet at judge, which loops back
    to e. check -> fast is not a loop edge although fast is not only reached through check."""
    wf = Workflow("t", S)
    for n in ("e", "check", "fast", "slow", "judge"):
        wf.python(n, noop)
    wf.branch("e", lambda s: "check", to=["check", "fast"])
    wf.branch("check", lambda s: "fast", to=["fast", "slow"])
    wf.edge("fast", "judge").edge("slow", "judge")
    wf.branch("judge", lambda s: END, to=["e", END], max_loops=2)
    assert wf.compile().loop_edges == {("judge", "e")}


def test_loop_closed_by_an_edge_counts_at_the_branch():
    """review -branch-> revise -edge-> review: the branch's edge to revise is the loop edge."""
    wf = simple("write", "review")
    wf.python("revise", noop)
    wf.branch("review", lambda s: END, to=["revise", END], max_loops=2)
    wf.edge("revise", "review")
    assert wf.compile().loop_edges == {("review", "revise")}


def test_branch_inside_a_loop_closed_by_an_edge():
    """plan -> check -branch-> fast | slow -> judge -branch-> revise | END; revise -edge-> plan.
    The loop is decided at judge; check's choice is not a loop edge."""
    wf = simple("plan", "check")
    for n in ("fast", "slow", "judge", "revise"):
        wf.python(n, noop)
    wf.branch("check", lambda s: "fast", to=["fast", "slow"])
    wf.edge("fast", "judge").edge("slow", "judge")
    wf.branch("judge", lambda s: END, to=["revise", END], max_loops=2)
    wf.edge("revise", "plan")
    assert wf.compile().loop_edges == {("judge", "revise")}


def test_edge_closing_a_loop_with_no_branch_on_it():
    wf = simple("plan", "write", "review")
    wf.python("judge", noop)
    wf.branch("review", lambda s: "judge", to=["write", "judge"], max_loops=2)
    wf.edge("judge", "plan")
    # the only branch on the outer loop review -> judge -> plan -> write -> review is review's
    p = one_problem(wf)
    assert "branch after 'review': every target (write, judge) loops back" in p
    assert "add a way out of the loop (END or a later step)" in p


def test_every_target_loops():
    wf = simple("write", "review")
    wf.branch("review", lambda s: "write", to=["write"], max_loops=2)
    assert "branch after 'review': every target (write) loops back" in one_problem(wf)


# --------------------------------------------------------------------------- templates
def test_template_field_missing_in_prompt():
    wf = Workflow("t", S, agents=[Agent("writer")])
    wf.llm("write", "writer", "About {topik}: {notes}", output="draft")
    p = one_problem(wf)
    assert "step 'write': prompt uses {topik}, which is not a field of S" in p
    assert "(fields:" in p and "topic" in p


def test_template_field_missing_in_tool_arg():
    wf = Workflow("t", S)
    wf.tool("call", lookup, {"query": "{question}"}, output="draft")
    p = one_problem(wf)
    assert "step 'call': argument 'query' uses {question}, which is not a field of S" in p
    assert "(fields:" in p and "topic" in p


def test_template_missing_field_reported_once_per_step():
    wf = Workflow("t", S, agents=[Agent("writer")])
    wf.llm("write", "writer", "{nope} and {nope.x} and {nope[0]}", output="draft")
    assert "uses {nope}" in one_problem(wf)


def test_template_attribute_and_index_of_a_field_are_fine():
    wf = Workflow("t", WithModel, agents=[Agent("writer")])
    wf.llm("write", "writer", "{sub.a} {tags[0]} {{literal}}", output=None)
    wf.compile()


@pytest.mark.parametrize("template", ["Item {0}", "Item {}"])
def test_positional_template_field(template):
    wf = Workflow("t", S, agents=[Agent("writer")])
    wf.llm("write", "writer", template, output="draft")
    p = one_problem(wf)
    assert "step 'write': prompt:" in p and "must be named after a state field" in p


def test_non_string_tool_args_and_callable_prompts_are_not_templates():
    wf = Workflow("t", S, agents=[Agent("writer")])
    wf.llm("write", "writer", lambda scope: "{not_a_field}", output="draft")
    wf.tool("call", lookup, {"query": lambda scope: scope["topic"]}, output="verdict")
    wf.edge("write", "call")
    wf.compile()


# ----------------------------------------------------------------------------- fan-out
def fan_wf(over="questions", item="q", output="notes", **kw) -> Workflow:
    wf = Workflow("t", S, agents=[Agent("researcher")])
    wf.python("plan", noop)
    wf.llm("research", "researcher", "Q: {%s}" % item, output=output)
    wf.python("join", noop)
    wf.fan_out("plan", over=over, to="research", join="join", item=item, **kw)
    return wf


def test_fan_out_ok():
    cw = fan_wf().compile()
    assert cw.body_of == {"research": "plan"}
    assert cw.fan_out_of("research").over == "questions" and cw.fan_out_of("plan") is None


def test_fan_out_over_non_list_field():
    p = one_problem(fan_wf(over="topic"))
    assert "fan-out after 'plan' is over 'topic', a str, not a list" in p
    assert "declare it as list[...] or fan out over another field" in p


def test_fan_out_over_unknown_field():
    p = one_problem(fan_wf(over="questons"))
    assert "fan-out after 'plan' is over 'questons', which is not a field of S" in p
    assert "did you mean 'questions'?" in p
    p = one_problem(fan_wf(over="zzz"))
    assert "use one of: questions, notes, scores" in p          # the list fields


def test_fan_out_item_shadows_a_state_field():
    p = one_problem(fan_wf(item="topic"))
    assert "fan-out after 'plan': item name 'topic' shadows a state field" in p
    assert "pick another item=" in p


def test_fan_out_step_writes_a_field_without_reducer():
    p = one_problem(fan_wf(output="draft"))
    assert "step 'research' runs in a fan-out and writes 'draft', which has no reducer" in p
    assert "declare it Annotated[list[...], append] or write to a branch-local name" in p


def test_fan_out_step_may_write_an_operator_add_field_with_parse():
    wf = fan_wf(output="scores")
    wf.steps["research"].parse = len
    wf.compile()


def test_fan_out_branch_local_name_is_usable_later_in_the_branch_only():
    def build(join_prompt: str) -> Workflow:
        wf = Workflow("t", S, agents=[Agent("researcher"), Agent("writer")])
        wf.python("plan", noop)
        wf.tool("lookup", lookup, {"query": "{q}"}, output="found")
        wf.llm("research", "researcher", "Q: {q}\n{found}", output="notes")
        wf.llm("write", "writer", join_prompt, output="draft")
        wf.fan_out("plan", over="questions", to="lookup", join="write", item="q")
        wf.edge("lookup", "research")
        return wf

    cw = build("{notes}").compile()
    assert cw.body_of == {"lookup": "plan", "research": "plan"}
    # the join runs once, outside the branches: neither the item nor branch-local names exist there
    problems = problems_of(build("{notes} {found} {q}"))
    assert len(problems) == 2, problems
    assert any("step 'write': prompt uses {found}" in p for p in problems)
    assert any("step 'write': prompt uses {q}" in p for p in problems)


def test_fan_out_branch_local_name_is_not_visible_in_another_fan_out():
    wf = Workflow("t", S, agents=[Agent("r")])
    wf.python("p1", noop)
    wf.llm("a", "r", "{q}", output="local_a")
    wf.python("p2", noop)
    wf.llm("b", "r", "{q} {local_a}", output="notes")
    wf.python("end", noop)
    wf.fan_out("p1", over="questions", to="a", join="p2", item="q")
    wf.fan_out("p2", over="questions", to="b", join="end", item="q")
    p = one_problem(wf)
    assert "step 'b': prompt uses {local_a}, which is not a field of S or a branch name" in p


def test_fan_out_body_looping_to_its_source():
    wf = fan_wf()
    wf.edge("research", "plan")
    problems = problems_of(wf)
    assert any("fan-out after 'plan' loops back to its own source" in p
               and "branches must end at the join 'join'" in p for p in problems)


# ---------------------------------------------------------------------------- outputs
def test_llm_text_into_non_str_field_needs_parse():
    wf = Workflow("t", S, agents=[Agent("counter")])
    wf.llm("count", "counter", "How many? {topic}", output="count")
    p = one_problem(wf)
    assert "step 'count' writes the model's text (str) into 'count' (int)" in p
    assert "give parse= to convert it" in p
    wf = Workflow("t", S, agents=[Agent("counter")])
    wf.llm("count", "counter", "How many? {topic}", output="count", parse=int)
    wf.compile()


def test_llm_text_into_plain_list_needs_parse():
    wf = Workflow("t", S, agents=[Agent("planner")])
    wf.llm("plan", "planner", "{topic}", output="questions")
    p = one_problem(wf)
    assert "step 'plan' writes the model's text (str) into 'questions' (list[str])" in p
    assert "give parse=" in p


@pytest.mark.parametrize("field", ["notes", "draft", "maybe"])
def test_llm_text_into_str_like_fields_is_fine(field):
    wf = Workflow("t", S, agents=[Agent("w")])
    wf.llm("write", "w", "{topic}", output=field)         # append-list of str, str, Optional[str]
    wf.compile()


def test_llm_text_into_operator_add_int_list_needs_parse():
    wf = Workflow("t", S, agents=[Agent("w")])
    wf.llm("score", "w", "{topic}", output="scores")
    assert "into 'scores' (list[int]); give parse=" in one_problem(wf)


def test_output_not_a_state_field_outside_a_fan_out():
    wf = Workflow("t", S, agents=[Agent("w")])
    wf.llm("write", "w", "{topic}", output="drafft")
    p = one_problem(wf)
    assert "step 'write' writes 'drafft', which is not a field of S" in p
    assert "add the field or change output=" in p


def test_tool_output_not_a_state_field():
    wf = Workflow("t", S)
    wf.tool("call", lookup, {"query": "{topic}"}, output="result")
    assert "step 'call' writes 'result', which is not a field of S" in one_problem(wf)


def test_two_continuations_from_one_step():
    wf = simple("a", "b", "c")
    wf.branch("a", lambda s: "c", to=["b", "c"])
    p = one_problem(wf)
    assert "step 'a' already continues with an edge; it cannot also have a branch" in p
    assert "(use branch() to choose between targets)" in p


def test_edge_then_fan_out_and_branch_then_edge():
    wf = simple("a", "b")
    wf.fan_out("a", over="questions", to="b", join="b")
    assert "step 'a' already continues with an edge; it cannot also have a fan-out" in problems_of(wf)[0]
    wf = simple("a", "b")
    wf.python("c", noop)
    wf.branch("b", lambda s: "c", to=["c", END])
    wf.edge("b", "c")
    assert "step 'b' already continues with a branch; it cannot also have an edge to 'c'" in one_problem(wf)


def test_workflow_with_no_steps():
    p = one_problem(Workflow("empty", S))
    assert "it has no steps; add one with llm(), tool() or python()" in p


def test_bad_workflow_output():
    wf = Workflow("t", S, output="verdcit").python("a", noop)
    p = one_problem(wf)
    assert "output 'verdcit' is not a field of S; did you mean 'verdict'?" in p
    wf = Workflow("t", S, output="zzzzzz").python("a", noop)
    assert "output 'zzzzzz' is not a field of S; use one of: topic, questions" in one_problem(wf)
    assert Workflow("t", S, output="verdict").python("a", noop).compile().output == "verdict"


def test_several_problems_at_once():
    wf = Workflow("many", S, output="nope")
    wf.llm("ask", "ghost", "{topic}", output="draft")
    wf.tool("call", "missing", {"query": "{topic}"}, output="verdict")
    wf.edge("ask", "call")
    wf.edge("call", "wat")
    problems = problems_of(wf)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    for part in ("unknown agent 'ghost'", "unknown tool 'missing'", "unknown step 'wat'",
                 "output 'nope'"):
        assert part in text
    assert not any(p.startswith(("  - ", "workflow ")) for p in problems)   # bare lines
    with pytest.raises(WorkflowError) as info:
        wf.compile()
    assert str(info.value).startswith("workflow 'many' is invalid:\n  - ")
    assert isinstance(info.value, ValueError)


def test_several_graph_problems_at_once():
    wf = simple("a", "b", "c")
    wf.edge("c", "a")
    wf.python("x", noop)
    wf.python("y", noop)
    problems = problems_of(wf)
    assert len(problems) == 3, problems
    assert sum("unreachable" in p for p in problems) == 2
    assert sum("form a loop with no bound" in p for p in problems) == 1


# -------------------------------------------------------------------- definition-time errors
def test_duplicate_step_name():
    wf = simple("a")
    with pytest.raises(ValueError, match="already has a step named 'a'"):
        wf.python("a", noop)


@pytest.mark.parametrize("name", ["", END, None])
def test_invalid_step_name(name):
    with pytest.raises(ValueError, match="invalid step name"):
        Workflow("t", S).python(name, noop)


def test_state_must_be_a_base_model():
    with pytest.raises(TypeError, match="state must be a pydantic BaseModel class"):
        Workflow("t", dict)
    with pytest.raises(TypeError, match="state must be a pydantic BaseModel class"):
        Workflow("t", S())


@pytest.mark.parametrize("n", [0, -1])
def test_max_loops_must_be_positive(n):
    wf = simple("a", "b")
    with pytest.raises(ValueError, match="branch after 'b': max_loops must be at least 1"):
        wf.branch("b", lambda s: "a", to=["a", END], max_loops=n)


def test_bad_on_tool_error():
    with pytest.raises(ValueError, match="on_tool_error is 'observe'"):
        Workflow("t", S, on_tool_error="ignore")
    with pytest.raises(ValueError, match="step 'call': on_error is 'observe' or 'fail'"):
        Workflow("t", S).tool("call", lookup, {"query": "x"}, on_error="retry")
    cw = Workflow("t", S, on_tool_error="fail").tool("call", lookup, {"query": "x"}, on_error="observe").compile()
    assert cw.on_tool_error == "fail" and cw.steps["call"].on_error == "observe"


def test_router_and_python_fn_must_be_callable():
    wf = simple("a")
    with pytest.raises(TypeError, match="router must be callable"):
        wf.branch("a", "a", to=["a"])
    with pytest.raises(TypeError, match="step 'b': fn must be callable"):
        wf.python("b", 42)


@pytest.mark.parametrize("n", [0, -3])
def test_agent_max_turns(n):
    with pytest.raises(ValueError, match="agent 'a': max_turns must be at least 1"):
        Agent("a", max_turns=n)


def test_agent_needs_a_name():
    with pytest.raises(ValueError, match="non-empty name"):
        Agent("")


def test_agent_params_from_a_mapping_and_tools_from_functions():
    def helper(x: int) -> int:
        """Double x."""
        return 2 * x
    a = Agent("a", params={"max_tokens": 7, "temperature": 0.0}, tools=[helper, lookup])
    assert a.params.max_tokens == 7
    assert [t.name for t in a.tools] == ["helper", "lookup"]


def test_conflicting_agent_with_the_same_name():
    wf = Workflow("t", S)
    first = Agent("writer", "One.")
    wf.add_agent(first)
    wf.add_agent(first)                               # the same object again is fine
    wf.llm("a", first, "{topic}", output="draft")
    with pytest.raises(ValueError, match="already has a different agent named 'writer'"):
        wf.add_agent(Agent("writer", "Two."))
    with pytest.raises(ValueError, match="already has a different agent named 'writer'"):
        wf.llm("b", Agent("writer", "One."), "{topic}", output="draft")
    with pytest.raises(ValueError, match="already has a different agent named 'writer'"):
        Workflow("t", S, agents=[first, Agent("writer")])


def test_conflicting_tool_with_the_same_name():
    wf = Workflow("t", S, tools=[lookup])
    assert wf.add_tool(lookup) is wf.tools["lookup"]
    assert wf.add_tool(lookup.fn) is wf.tools["lookup"]     # the same function, wrapped again

    def lookup_(query: str) -> str:
        return query
    with pytest.raises(ValueError, match="already has a different tool named 'lookup'"):
        wf.add_tool(tool(lookup_, name="lookup"))


# ------------------------------------------------------------------------------ happy path
def test_research_team_graph():
    wf = research_team()
    cw = wf.compile()
    g = cw.graph
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {"plan", "lookup", "research", "write", "review", "publish", END}
    assert cw.entry == "plan" and cw.output == "draft" and cw.name == "research"

    kinds = {n: g.nodes[n]["kind"] for n in g}
    assert kinds == {"plan": "llm", "lookup": "tool", "research": "llm", "write": "llm",
                     "review": "llm", "publish": "python", END: "end"}
    assert g.nodes["plan"]["agent"] == "planner" and g.nodes["research"]["agent"] == "researcher"
    assert g.nodes["lookup"]["agent"] is None and g.nodes["lookup"]["tool"] == "lookup"
    assert g.nodes["research"]["tool"] is None
    assert {n: g.nodes[n]["fan_out"] for n in g} == {
        "plan": None, "lookup": "plan", "research": "plan", "write": None, "review": None,
        "publish": None, END: None}

    edges = {(u, v): d["kind"] for u, v, d in g.edges(data=True)}
    assert edges == {("plan", "lookup"): "fan_out", ("lookup", "research"): "edge",
                     ("research", "write"): "join", ("write", "review"): "edge",
                     ("review", "write"): "branch", ("review", "publish"): "branch",
                     ("publish", END): "end"}
    assert g.edges["plan", "lookup"]["over"] == "questions"

    assert cw.loop_edges == frozenset({("review", "write")})
    assert cw.body_of == {"lookup": "plan", "research": "plan"}
    assert cw.fan_out_of("lookup").join == "write" and cw.fan_out_of("lookup").item == "question"
    assert cw.next_step("lookup") == "research"
    assert cw.next_step("research") == "write"          # a branch's end goes to the join
    assert cw.next_step("write") == "review"
    assert cw.next_step("publish") == END
    assert cw.reducers["notes"].name == "append" and "questions" not in cw.reducers
    assert set(cw.agents) == {"planner", "researcher", "writer", "reviewer"}
    assert set(cw.tools) == {"lookup"}


def test_compile_is_cached_and_invalidated():
    wf = research_team()
    first = wf.compile()
    assert wf.compile() is first
    wf.python("archive", noop)                     # a new step drops the cache ...
    with pytest.raises(WorkflowError, match="'archive' is unreachable"):
        wf.compile()
    wf.edge("publish", "archive")                  # ... and so does a new edge
    second = wf.compile()
    assert second is not first and second is wf.compile()
    assert "archive" in second.graph and "archive" not in first.graph
    assert second.next_step("publish") == "archive" and first.next_step("publish") == END
    wf.start("plan")
    assert wf.compile() is not second


def test_compiled_workflow_is_a_snapshot():
    wf = research_team()
    cw = wf.compile()
    wf.python("archive", noop)
    assert "archive" not in cw.steps


def test_branch_to_end_and_end_edge():
    wf = simple("a", "b")
    wf.branch("b", lambda s: END, to=["a", END], max_loops=1)
    cw = wf.compile()
    assert cw.graph.edges["b", END]["kind"] == "branch"
    assert cw.loop_edges == {("b", "a")}


def test_edge_to_end():
    wf = simple("a")
    wf.python("b", noop)
    wf.edge("a", END)
    with pytest.raises(WorkflowError, match="'b' is unreachable"):
        wf.compile()


# ------------------------------------------------------------------------------- state helpers
def test_reducers_of():
    found = reducers_of(S)
    assert set(found) == {"notes", "scores"}
    assert found["notes"] is append and found["scores"].name == "add"


def test_apply_update_append_one_item_and_a_list():
    red = reducers_of(S)
    s0 = S(topic="t")
    s1 = apply_update(s0, {"notes": "one"}, red)
    assert s1.notes == ["one"] and s0.notes == []                 # the old state is unchanged
    s2 = apply_update(s1, {"notes": ["two", "three"]}, red)
    assert s2.notes == ["one", "two", "three"]
    s3 = apply_update(s2, {"notes": ("four",), "topic": "new"}, red)
    assert s3.notes[-1] == "four" and s3.topic == "new"           # plain fields are replaced
    assert isinstance(s3, S)


def test_apply_update_operator_add():
    red = reducers_of(S)
    s = apply_update(S(scores=[1]), {"scores": [2, 3]}, red)
    assert s.scores == [1, 2, 3]


def test_apply_update_without_reducers_replaces():
    s = apply_update(S(notes=["a"]), {"notes": ["b"]}, {})
    assert s.notes == ["b"]


def test_apply_update_empty_is_the_same_state():
    s = S()
    assert apply_update(s, {}, reducers_of(S)) is s


def test_apply_update_validation_error_names_the_field():
    with pytest.raises(StateError, match=r"count: Input should be a valid integer") as info:
        apply_update(S(), {"count": "many"}, reducers_of(S))
    assert "does not fit S" in str(info.value)
    with pytest.raises(StateError, match=r"notes\.1"):
        apply_update(S(), {"notes": ["ok", 3.5]}, reducers_of(S))
    assert issubclass(StateError, ValueError)


def test_apply_update_validates_and_coerces():
    s = apply_update(S(), {"count": "7"}, {})
    assert s.count == 7


def test_apply_update_reducer_type_error_is_a_state_error():
    """operator.add of a list and a str raises TypeError inside the reducer: a StateError."""
    with pytest.raises(StateError, match="scores"):
        apply_update(S(scores=[1]), {"scores": 2}, reducers_of(S))


def test_apply_update_unknown_field():
    with pytest.raises(StateError, match=r"S has no field 'nope' \(fields: topic, questions"):
        apply_update(S(), {"nope": 1}, {})


def test_render_lists_models_and_specs():
    scope = {"xs": ["a", "b"], "empty": [], "sub": Sub(a=2, b="y"), "n": 3.14159, "w": "hi",
             "t": ("p",)}
    assert render("Notes:\n{xs}", scope) == "Notes:\n- a\n- b"
    assert render("{empty}", scope) == "(none)"
    assert render("{t}", scope) == "- p"
    assert render("{sub}", scope) == '{"a":2,"b":"y"}'
    assert render("{n:.2f}|{w:>4}|{w}", scope) == "3.14|  hi|hi"
    assert render("{sub.b} {xs[1]} {{x}}", scope) == "y b {x}"
    with pytest.raises(KeyError):
        render("{missing}", scope)


def test_render_with_a_model_as_the_scope_values():
    s = S(topic="cats", notes=["n1"])
    assert render("{topic}: {notes}", dict(s)) == "cats: - n1"


def test_template_fields():
    assert template_fields("{a.b} {c[0]}") == ["a", "c"]
    assert template_fields("plain {{text}}") == []
    assert template_fields("{x} {x:>3} {y!r}") == ["x", "x", "y"]
    with pytest.raises(ValueError, match=r"\{0\} must be named after a state field"):
        template_fields("{0}")
    with pytest.raises(ValueError, match="must be named after a state field"):
        template_fields("{}")


def test_initial_state():
    cw = simple("a").compile()
    s = cw.initial_state({"topic": "x", "count": "2"})
    assert s == S(topic="x", count=2)
    assert cw.initial_state() == S()
    given = S(topic="y")
    assert cw.initial_state(given) is given
    with pytest.raises(ValueError, match=r"input does not match S: count: .*integer") as info:
        cw.initial_state({"count": "many"})
    assert "(fields: topic, questions" in str(info.value)
    with pytest.raises(ValueError, match=r"notes\.0"):
        cw.initial_state({"notes": [1.5]})


# ------------------------------------------------------------- fan-out: unread branch-local outputs
def fan_around(first: str) -> Workflow:
    """plan =fan_out over questions (item q)=> [first ...] => join, which reads `notes`; the caller
    adds the branch's steps."""
    wf = Workflow("t", S, agents=[Agent("researcher"), Agent("writer")])
    wf.python("plan", noop)
    wf.llm("join", "writer", "Notes: {notes}", output="draft")
    wf.fan_out("plan", over="questions", to=first, join="join", item="q")
    return wf


def test_fan_out_output_typo_is_a_compile_error_naming_the_state_field():
    wf = fan_around("research")
    wf.llm("research", "researcher", "Q: {q}", output="note")        # meant the reducer field `notes`
    p = one_problem(wf)
    assert "step 'research' runs in a fan-out and writes 'note', which is not a field of S" in p
    assert "no later step of its branch reads, so it would be dropped at the join" in p
    assert "did you mean 'notes'?" in p
    assert "a name that is not a state field is branch-local: it must be read by a later step of the same branch" in p


def test_fan_out_unread_branch_local_with_no_close_field():
    wf = fan_around("research")
    wf.llm("research", "researcher", "Q: {q}", output="zzz")
    p = one_problem(wf)
    assert "writes 'zzz', which is not a field of S" in p and "add the field to S or change output=" in p


def test_fan_out_branch_local_read_only_before_it_is_written_is_an_error():
    wf = fan_around("early")
    wf.llm("early", "researcher", "Q: {q} {found}", output="notes")   # a branch name, but not written yet
    wf.tool("lookup", lookup, {"query": "{q}"}, output="found")
    wf.edge("early", "lookup")
    p = one_problem(wf)
    assert "step 'lookup' runs in a fan-out and writes 'found'" in p


@pytest.mark.parametrize("add_reader", [
    lambda wf: wf.llm("use", "writer", "Use {found}", output="notes"),                  # a prompt template
    lambda wf: wf.tool("use", lookup, {"query": "more on {found}"}, output="notes"),    # a tool-argument template
    lambda wf: wf.tool("use", lookup, {"query": lambda s: s.q}, output="notes"),        # code may read it
    lambda wf: wf.llm("use", "writer", lambda s: f"{s.q}", output="notes"),             # code may read it
    lambda wf: wf.python("use", noop),                                                  # code may read it
], ids=["prompt", "tool-arg", "callable-arg", "callable-prompt", "python"])
def test_fan_out_branch_local_read_by_a_later_step_of_the_branch_compiles(add_reader):
    wf = fan_around("research")
    wf.llm("research", "researcher", "Q: {q}", output="found")
    add_reader(wf)
    wf.edge("research", "use")
    assert wf.compile().body_of == {"research": "plan", "use": "plan"}


def test_fan_out_branch_local_read_by_a_router_in_the_branch_compiles():
    wf = fan_around("research")
    wf.llm("research", "researcher", "Q: {q}", output="found")
    wf.llm("short", "writer", "Briefly: {q}", output="notes")
    wf.llm("long", "writer", "At length: {q}", output="notes")
    wf.branch("research", lambda s: "long" if len(s.found) > 100 else "short", to=["short", "long"])
    assert wf.compile().body_of == {"research": "plan", "short": "plan", "long": "plan"}
