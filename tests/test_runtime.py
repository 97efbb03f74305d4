"""The program runtime on the tiny model: routing, fan-out/join, loop bounds, typed state, failure
isolation, cancellation (KV blocks freed), the append-only conversation, events and the trace,
and input checking.

The tiny model's text is random bytes: nothing here asserts on generated text, only on lengths,
token ids, events and state written by Python steps and tools.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

import pytest
from pydantic import BaseModel

from agentrt import END, Agent, Runtime, Workflow, append, tool
from agentrt.graph import WorkflowError
from agentrt.runtime import ProgramResult, summarize
from agentrt.runtime.events import EVENT_KINDS
from runtime_helpers import P, Recorder, arun


@pytest.fixture
def engine(make_engine):
    return make_engine(kv_cache_tokens=4096)


def run_with(engine, body, **runtime_kw):
    """Run `await body(rt)` inside a Runtime on `engine`; returns (body's value, events)."""
    rec = Recorder()
    sinks = [rec, *runtime_kw.pop("on_event", ())]

    async def main():
        async with Runtime(engine, on_event=sinks, **runtime_kw) as rt:
            return await body(rt)

    return arun(main()), rec


def assert_pool_clean(engine):
    engine.pool.check_invariants()
    assert engine.pool.num_in_use == 0, f"{engine.pool.num_in_use} KV blocks still in use"
    assert not engine.requests and not engine.has_unfinished()


# ============================================================================ routing
class Route(BaseModel):
    text: str = ""
    kind: str = ""
    trail: Annotated[list[str], append] = []
    out: str = ""


def test_sequence_runs_steps_in_edge_order_not_declaration_order(engine):
    wf = Workflow("seq", Route, output="out")
    agent = Agent("a", "You are brief.", params=P(3))
    wf.python("third", lambda s: {"trail": "third"})        # declared first ...
    wf.llm("second", agent, "Say {text}", output="out")
    wf.python("first", lambda s: {"trail": "first"})
    wf.start("first").sequence("first", "second", "third")   # ... but the edges decide

    result, rec = run_with(engine, lambda rt: rt.run(wf, {"text": "hi"}))
    assert result.status == "done", result.error
    assert rec.steps_started() == ["first", "second", "third"]
    assert result.state.trail == ["first", "third"]
    assert result.steps == 3 and result.llm_calls == 1 and result.tokens_out == 3
    # every step ends before the next one starts
    starts_ends = [(e.event, e.data["step"]) for e in rec.events if e.event in ("step_start", "step_end")]
    assert starts_ends == [("step_start", "first"), ("step_end", "first"), ("step_start", "second"),
                           ("step_end", "second"), ("step_start", "third"), ("step_end", "third")]


def test_branch_follows_the_router_reading_state_a_python_step_wrote(engine):
    wf = Workflow("route", Route)
    wf.python("classify", lambda s: {"kind": "long" if len(s.text) > 5 else "short"})
    wf.python("long_path", lambda s: {"trail": "long"})
    wf.python("short_path", lambda s: {"trail": "short"})
    wf.llm("after", Agent("w", params=P(2)), "{trail}", output="out")
    wf.branch("classify", lambda s: f"{s.kind}_path", to=["long_path", "short_path"])
    wf.edge("long_path", "after").edge("short_path", "after")

    results, rec = run_with(engine, lambda rt: rt.run_many(wf, [{"text": "a much longer text"}, {"text": "tiny"}]))
    long_r, short_r = results
    assert [r.status for r in results] == ["done", "done"]
    assert long_r.state.kind == "long" and long_r.state.trail == ["long"]
    assert short_r.state.kind == "short" and short_r.state.trail == ["short"]
    assert rec.steps_started(long_r.program_id) == ["classify", "long_path", "after"]
    assert rec.steps_started(short_r.program_id) == ["classify", "short_path", "after"]


def test_router_returning_an_undeclared_target_fails_naming_step_and_targets(engine):
    wf = Workflow("badroute", Route)
    wf.python("decide", lambda s: {"kind": "x"})
    wf.python("left", lambda s: None)
    wf.python("right", lambda s: None)
    wf.branch("decide", lambda s: "nowhere", to=["left", "right"])

    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "failed"
    assert "'decide'" in result.error and "'nowhere'" in result.error
    assert "left, right" in result.error
    assert result.state.kind == "x"                  # the last good state is kept
    assert rec.steps_started() == ["decide"]
    [err] = rec.of("error")
    assert err.data["message"] == result.error
    assert rec.of("program_end")[0].data["status"] == "failed"


def test_router_that_raises_fails_the_program_naming_the_step(engine):
    wf = Workflow("raising", Route)
    wf.python("decide", lambda s: None)
    wf.python("left", lambda s: None)
    wf.branch("decide", lambda s: 1 / 0, to=["left", END])
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "failed"
    assert "'decide'" in result.error and "ZeroDivisionError" in result.error


# ============================================================================ fan-out / join
class Fan(BaseModel):
    questions: list[str] = ["q0", "q1", "q2"]
    answers: Annotated[list[str], append] = []
    after_join: list[str] = ["unset"]


LOOKUP_DELAY = {"q0": 0.15, "q1": 0.10, "q2": 0.05}      # the first item's branch finishes last


@tool
async def lookup(q: str) -> str:
    """Look a question up."""
    await asyncio.sleep(LOOKUP_DELAY.get(q, 0.01))
    return f"hit-{q}"


def fan_workflow():
    wf = Workflow("fan", Fan, output="answers")
    researcher = Agent("researcher", "You research.", params=P(6))
    wf.python("plan", lambda s: None)
    wf.llm("ask", researcher, "Question: {q}", output="draft")            # branch-local name
    wf.tool("search", lookup, {"q": "{q}"}, output="hits")                 # branch-local name
    wf.python("collect", lambda s: {"answers": f"{s.q}|{s.hits}|{type(s.draft).__name__}"})
    wf.python("join", lambda s: {"after_join": [n for n in ("q", "draft", "hits") if hasattr(s, n)]})
    wf.fan_out("plan", over="questions", to="ask", join="join", item="q")
    wf.sequence("ask", "search", "collect")
    return wf


def test_fan_out_runs_one_concurrent_branch_per_item_and_merges_in_item_order(engine):
    t0 = time.monotonic()
    result, rec = run_with(engine, lambda rt: rt.run(fan_workflow()))
    wall = time.monotonic() - t0
    assert result.status == "done", result.error

    [fan] = rec.of("fan_out")
    assert fan.data["items"] == 3 and fan.data["over"] == "questions"
    lanes = {e.data["lane"] for e in rec.of("step_start") if e.data["step"] == "ask"}
    assert lanes == {"plan[0]", "plan[1]", "plan[2]"}
    assert rec.steps_started().count("collect") == 3 and rec.steps_started().count("join") == 1

    # the three LLM requests were all in flight together: every llm_start precedes the first llm_end
    starts, ends = rec.index("llm_start"), rec.index("llm_end")
    assert len(starts) == 3 and max(starts) < min(ends)
    # the tool sleeps overlapped too
    t_starts, t_ends = rec.index("tool_start"), rec.index("tool_end")
    assert len(t_starts) == 3 and max(t_starts) < min(t_ends)
    assert wall < sum(LOOKUP_DELAY.values()) + 1.0
    tool_start_t = [e.t for e in rec.of("tool_start")]
    tool_end_t = [e.t for e in rec.of("tool_end")]
    assert max(tool_start_t) < min(tool_end_t)

    # merged in item order although q0's branch finished last; later steps of a branch saw its names
    assert result.output == result.state.answers == ["q0|hit-q0|str", "q1|hit-q1|str", "q2|hit-q2|str"]
    collect_ends = [e.data["lane"] for e in rec.of("step_end") if e.data["step"] == "collect"]
    assert collect_ends == ["plan[2]", "plan[1]", "plan[0]"]
    # ... and after the join those names are gone
    assert result.state.after_join == []
    assert result.llm_calls == 3 and result.tool_calls == 3 and result.steps == 1 + 3 * 3 + 1


def test_fan_out_over_an_empty_list_goes_straight_to_the_join(engine):
    result, rec = run_with(engine, lambda rt: rt.run(fan_workflow(), {"questions": []}))
    assert result.status == "done", result.error
    assert rec.of("fan_out")[0].data["items"] == 0
    assert rec.steps_started() == ["plan", "join"]
    assert result.state.answers == [] and result.state.after_join == []
    assert result.llm_calls == 0 and result.tool_calls == 0


def test_a_failing_branch_fails_the_program_and_stops_its_siblings(engine):
    @tool
    async def fragile(q: str) -> str:
        """Fails on q1, is slow otherwise."""
        if q == "q1":
            raise RuntimeError("no such page")
        await asyncio.sleep(5)
        return q

    wf = Workflow("fanfail", Fan, on_tool_error="fail")
    wf.python("plan", lambda s: None)
    wf.tool("search", fragile, {"q": "{q}"})
    wf.python("join", lambda s: None)
    wf.fan_out("plan", over="questions", to="search", join="join", item="q")
    t0 = time.monotonic()
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert time.monotonic() - t0 < 2.0               # the slow siblings were cancelled, not awaited
    assert result.status == "failed" and "'search'" in result.error and "no such page" in result.error
    assert "join" not in rec.steps_started()


# ============================================================================ loop bounds
class Loop(BaseModel):
    rounds: int = 0
    draft: str = ""
    finished: bool = False


def test_always_looping_branch_takes_the_back_edge_max_loops_times_then_the_exit(engine):
    wf = Workflow("loop", Loop)
    writer = Agent("writer", "You write.", params=P(2))
    wf.llm("draft", writer, "Draft round {rounds}", output="draft")
    wf.python("review", lambda s: {"rounds": s.rounds + 1})
    wf.python("finish", lambda s: {"finished": True})
    wf.edge("draft", "review")
    wf.branch("review", lambda s: "draft", to=["draft", "finish"], max_loops=3)

    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    started = rec.steps_started()
    assert started == ["draft", "review"] * 4 + ["finish"]      # 1 pass + 3 loops, then the exit
    assert result.state.rounds == 4 and result.state.finished
    [limit] = rec.of("loop_limit")
    assert limit.data == {"step": "review", "wanted": "draft", "exit": "finish", "max_loops": 3}
    assert result.llm_calls == 4


def test_loop_inside_fan_out_branches_is_bounded_per_branch(engine):
    class S(BaseModel):
        items: list[str] = ["a", "b"]
        log: Annotated[list[str], append] = []

    wf = Workflow("lanes", S)
    wf.python("start", lambda s: None)
    wf.python("work", lambda s: {"log": s.x})
    wf.python("join", lambda s: None)
    wf.fan_out("start", over="items", to="work", join="join", item="x")
    wf.branch("work", lambda s: "work", to=["work", "join"], max_loops=2)
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    assert result.state.log == ["a"] * 3 + ["b"] * 3         # each branch: 1 + 2 loops
    assert len(rec.of("loop_limit")) == 2


# ============================================================================ typed state
class Typed(BaseModel):
    question: str = "why?"
    count: int = 0
    notes: Annotated[list[str], append] = ["seed"]
    answer: str = ""


def test_final_state_is_a_model_instance_and_output_is_the_named_field(engine):
    wf = Workflow("typed", Typed, output="answer")
    wf.llm("answer", Agent("a", params=P(4)), "Q: {question}", output="answer")
    wf.python("count", lambda s: {"count": len(s.answer), "notes": "done"})
    wf.edge("answer", "count")
    result, _ = run_with(engine, lambda rt: rt.run(wf, Typed(question="how?")))
    assert result.status == "done", result.error
    assert isinstance(result, ProgramResult)
    assert isinstance(result.state, Typed) and not isinstance(result.state, dict)
    assert result.output == result.state.answer and isinstance(result.output, str)
    assert result.state.question == "how?" and result.state.count == len(result.state.answer)
    assert result.state.notes == ["seed", "done"]
    d = result.to_dict()
    assert d["state"]["notes"] == ["seed", "done"] and d["output"] == result.output
    json.dumps(d)


def test_workflow_without_output_gives_none(engine):
    wf = Workflow("noout", Typed)
    wf.python("p", lambda s: {"count": 1})
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done" and result.output is None and result.state.count == 1


def test_python_step_returning_a_bad_type_fails_with_a_clear_message(engine):
    wf = Workflow("badtype", Typed)
    wf.python("ok", lambda s: {"count": 1})
    wf.python("bad", lambda s: ["count", 2])
    wf.edge("ok", "bad")
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "failed"
    assert result.error.startswith("step 'bad':")
    assert "returned list" in result.error and "dict of field updates" in result.error
    assert result.state.count == 1


@pytest.mark.parametrize("update, words", [
    ({"count": "many"}, ["count", "integer"]),
    ({"notes": 5}, ["notes"]),
    ({"countt": 1}, ["'countt'", "fields:"]),
])
def test_python_update_that_does_not_validate_fails_naming_the_field(engine, update, words):
    wf = Workflow("badupdate", Typed)
    wf.python("bad", lambda s: update)
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "failed"
    assert result.error.startswith("step 'bad':")
    for w in words:
        assert w in result.error, result.error
    assert result.state == Typed()                 # nothing of the bad update got in


def test_python_step_may_be_async_and_may_return_a_whole_new_state(engine):
    async def bump(s):
        await asyncio.sleep(0.01)
        return {"count": s.count + 1}

    wf = Workflow("whole", Typed)
    wf.python("bump", bump)
    # a returned state replaces the old one: its reducer list already holds the appended item,
    # so "seed" must not be appended twice
    wf.python("replace", lambda s: s.model_copy(update={"notes": [*s.notes, "new"], "count": s.count + 1}))
    wf.edge("bump", "replace")
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    assert result.state.count == 2
    assert result.state.notes == ["seed", "new"]


def test_python_step_in_a_fan_out_may_not_write_a_plain_field_or_return_a_state(engine):
    class S(BaseModel):
        items: list[int] = [1, 2]
        total: int = 0

    for fn, words in ((lambda s: {"total": s.i}, ["'total'", "no reducer"]),
                      (lambda s: S(), ["fan-out", "dict of updates"])):
        wf = Workflow("lanewrite", S)
        wf.python("start", lambda s: None)
        wf.python("work", fn)
        wf.python("join", lambda s: None)
        wf.fan_out("start", over="items", to="work", join="join", item="i")
        result, _ = run_with(engine, lambda rt: rt.run(wf))
        assert result.status == "failed" and result.error.startswith("step 'work':")
        for w in words:
            assert w in result.error, result.error


def test_llm_step_parse_converts_the_text_and_a_raising_parse_fails_the_step(engine):
    class S(BaseModel):
        length: int = -1
        number: int = -1

    wf = Workflow("parse", S)
    agent = Agent("a", params=P(7))
    wf.llm("measure", agent, "Say something.", output="length", parse=lambda text: 1000 + len(text))
    wf.llm("number", agent, "Give a number.", output="number", parse=lambda text: int("not a number"))
    wf.edge("measure", "number")
    result, _ = run_with(engine, lambda rt: rt.run(wf))
    assert 1000 <= result.state.length <= 1007                # the parsed value (an int) was written
    assert result.status == "failed" and result.error.startswith("step 'number': parse raised ValueError")
    assert result.state.number == -1


def test_prompt_longer_than_the_context_fails_only_that_program(make_engine):
    engine = make_engine(kv_cache_tokens=2048, max_model_len=128)

    class S(BaseModel):
        text: str = "short"
        out: str = ""

    wf = Workflow("ctx", S)
    wf.llm("say", Agent("a", "Be brief.", params=P(4)), "Repeat: {text}", output="out")
    results, _ = run_with(engine, lambda rt: rt.run_many(wf, [{"text": "x" * 300}, {}]))
    long_r, short_r = results
    assert short_r.status == "done"
    assert long_r.status == "failed" and long_r.error.startswith("step 'say': agent 'a':")
    assert "max_model_len" in long_r.error and long_r.llm_calls == 0
    assert_pool_clean(engine)


# ============================================================================ failure isolation
class Job(BaseModel):
    n: int = 0
    first: str = ""
    second: str = ""


def test_one_failing_program_does_not_disturb_the_others(engine):
    def explode(s):
        if s.n == 2:
            raise RuntimeError(f"bad input {s.n}")
        return None

    wf = Workflow("iso", Job, output="second")
    agent = Agent("a", "You help.", params=P(4))
    wf.llm("first", agent, "Job {n}", output="first")
    wf.python("explode", explode)
    wf.llm("second", agent, "Again {n}", output="second")
    wf.sequence("first", "explode", "second")

    results, rec = run_with(engine, lambda rt: rt.run_many(wf, [{"n": i} for i in range(4)]))
    assert [r.status for r in results] == ["done", "done", "failed", "done"]
    bad = results[2]
    assert "'explode'" in bad.error and "RuntimeError" in bad.error and "bad input 2" in bad.error
    assert bad.llm_calls == 1 and bad.state.first != "" and bad.state.second == ""
    for r in results[:2] + results[3:]:
        assert r.error is None and r.llm_calls == 2 and r.tokens_out == 8
    assert [e.program for e in rec.of("error")] == [bad.program_id]
    assert_pool_clean(engine)


# ============================================================================ cancellation
class Cx(BaseModel):
    a: str = ""
    b: str = ""
    c: str = ""
    hits: str = ""


def _short_workflow():
    wf = Workflow("fast", Cx)
    agent = Agent("quick", "You are quick.", params=P(8))
    wf.llm("s1", agent, "one", output="a").llm("s2", agent, "two", output="b").llm("s3", agent, "three", output="c")
    return wf.sequence("s1", "s2", "s3")


def test_cancel_while_the_llm_request_runs_frees_its_blocks_and_spares_the_others(engine):
    slow = Workflow("slow", Cx)
    slow.llm("long", Agent("verbose", params=P(1500)), "Write a long essay.", output="a")
    fast = _short_workflow()

    async def body(rt):
        started = asyncio.Event()
        rt.sinks.append(lambda e: e.event == "llm_start" and e.program == "slow-0" and started.set())
        victim = rt.submit(slow, program_id="slow-0")
        others = [rt.submit(fast) for _ in range(2)]
        await started.wait()
        await asyncio.sleep(0.05)                     # a few decode steps in
        assert engine.pool.num_in_use > 0
        in_flight = [rid for rid in list(engine.requests) if rid.startswith("slow-0/")]
        assert in_flight, "the slow request should be running"
        t0 = time.monotonic()
        assert rt.cancel("slow-0") is True
        cancelled = await victim.result()
        cancel_latency = time.monotonic() - t0
        done = await asyncio.gather(*(p.result() for p in others))
        # the abort is applied by the engine loop at its next step, while the runtime still runs
        deadline = time.monotonic() + 2.0
        while any(rid in engine.requests for rid in in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert not any(rid in engine.requests for rid in in_flight)
        assert engine.pool.num_in_use == 0
        return cancelled, done, cancel_latency

    (cancelled, done, latency), rec = run_with(engine, body)
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled"
    assert latency < 0.5
    assert [r.status for r in done] == ["done", "done"] and all(r.llm_calls == 3 for r in done)
    assert len(rec.of("llm_start", "slow-0")) == 1 and rec.of("llm_end", "slow-0") == []
    assert rec.of("program_end", "slow-0")[0].data["status"] == "cancelled"
    assert rec.of("error", "slow-0") == []           # a cancel is not an error
    assert_pool_clean(engine)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_cancel_while_paused_in_a_slow_tool(engine, kind):
    if kind == "async":
        @tool(timeout=30)
        async def crawl(url: str) -> str:
            """Slow."""
            await asyncio.sleep(20)
            return url
    else:
        @tool(timeout=30)
        def crawl(url: str) -> str:
            """Slow, in a thread (which cannot be stopped: it is abandoned)."""
            time.sleep(0.3)
            return url

    wf = Workflow("tooly", Cx)
    wf.llm("think", Agent("t", params=P(4)), "Plan", output="a")
    wf.tool("crawl", crawl, {"url": "http://x/{a}"}, output="hits")
    wf.llm("after", Agent("t2", params=P(4)), "After {hits}", output="b")
    wf.sequence("think", "crawl", "after")

    async def body(rt):
        in_tool = asyncio.Event()
        rt.sinks.append(lambda e: e.event == "tool_start" and e.program == "tooly-0" and in_tool.set())
        victim = rt.submit(wf, program_id="tooly-0")
        others = [rt.submit(_short_workflow()) for _ in range(2)]
        await in_tool.wait()
        t0 = time.monotonic()
        assert rt.cancel("tooly-0")
        r = await victim.result()
        latency = time.monotonic() - t0
        return r, latency, await asyncio.gather(*(p.result() for p in others))

    (r, latency, others), rec = run_with(engine, body)
    assert r.status == "cancelled" and latency < 0.25
    assert r.state.a != "" and r.state.hits == "" and r.llm_calls == 1 and r.tool_calls == 1
    assert rec.of("tool_end", "tooly-0") == [] and "after" not in rec.steps_started("tooly-0")
    assert [o.status for o in others] == ["done", "done"]
    assert_pool_clean(engine)


def test_cancel_right_after_submit_gives_a_cancelled_result_not_an_exception(engine):
    """Regression: cancelling a program whose task had not started yet cancelled the task before
    run() was entered, so run_many's gather raised CancelledError and took every program down."""
    fast = _short_workflow()

    async def body(rt):
        return await rt.run_many(fast, [{}, {}, {}], on_submit=lambda p: p.id == "fast-1" and p.cancel())

    results, rec = run_with(engine, body)
    assert [r.status for r in results] == ["done", "cancelled", "done"]
    assert results[1].steps == 0 and results[1].llm_calls == 0
    assert rec.kinds("fast-1") == ["program_start", "program_end"]
    assert_pool_clean(engine)


def test_cancel_during_a_fan_out_aborts_every_branch_request(engine):
    class S(BaseModel):
        items: list[str] = ["a", "b", "c"]
        out: Annotated[list[str], append] = []

    wf = Workflow("fancancel", S)
    wf.python("start", lambda s: None)
    wf.llm("essay", Agent("w", params=P(1500)), "Write about {x}", output="out")
    wf.python("join", lambda s: None)
    wf.fan_out("start", over="items", to="essay", join="join", item="x")

    async def body(rt):
        starts = []
        all_started = asyncio.Event()
        rt.sinks.append(lambda e: e.event == "llm_start" and e.program == "fancancel-0"
                        and (starts.append(e), len(starts) == 3 and all_started.set()))
        p = rt.submit(wf, program_id="fancancel-0")
        other = rt.submit(_short_workflow())
        await all_started.wait()
        await asyncio.sleep(0.03)
        rids = [e.data["request_id"] for e in starts]
        assert all(rid in engine.requests for rid in rids)
        assert rt.cancel(p.id)
        r = await p.result()
        done = await other.result()
        deadline = time.monotonic() + 2.0
        while any(rid in engine.requests for rid in rids) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert not any(rid in engine.requests for rid in rids)
        return r, done

    (r, done), rec = run_with(engine, body)
    assert r.status == "cancelled" and done.status == "done"
    assert "join" not in rec.steps_started(r.program_id) and r.state.out == []
    assert_pool_clean(engine)


def test_closing_the_runtime_right_after_a_cancel_frees_the_request(engine):
    """Regression: the abort of a cancelled request is queued for the engine loop; closing the
    runtime at once stopped the loop before it applied it, leaving the request's blocks held."""
    slow = Workflow("slow", Cx)
    slow.llm("long", Agent("verbose", params=P(1500)), "Write a long essay.", output="a")

    async def body(rt):
        started = asyncio.Event()
        rt.sinks.append(lambda e: e.event == "llm_start" and started.set())
        p = rt.submit(slow)
        await started.wait()
        await asyncio.sleep(0.03)
        assert engine.pool.num_in_use > 0
        assert rt.cancel(p.id) and not rt.cancel("no-such-program")
        return await p.result()

    result, _ = run_with(engine, body)             # the runtime closes right after the cancel
    assert result.status == "cancelled"
    assert_pool_clean(engine)


def test_close_cancels_what_still_runs(engine):
    slow = Workflow("slow", Cx)
    slow.llm("long", Agent("verbose", params=P(1500)), "Write a long essay.", output="a")
    rec = Recorder()

    async def main():
        rt = Runtime(engine, on_event=[rec])
        started = asyncio.Event()
        rt.sinks.append(lambda e: e.event == "llm_start" and started.set())
        p = rt.submit(slow)
        await started.wait()
        await rt.close()
        return await p.result()

    result = arun(main())
    assert result.status == "cancelled"
    assert rec.of("program_end")[0].data["status"] == "cancelled"
    assert_pool_clean(engine)


# ============================================================================ append-only conversation
class Chat(BaseModel):
    topic: str = "bees"
    t1: str = ""
    t2: str = ""
    t3: str = ""
    other: str = ""


def test_agent_conversation_is_append_only_and_later_turns_hit_the_prefix_cache(engine):
    wf = Workflow("chat", Chat)
    talker = Agent("talker", "You are a careful assistant who answers in one short line. " * 2, params=P(12))
    bystander = Agent("bystander", "You only summarize.", params=P(5))
    wf.llm("t1", talker, "Tell me about {topic}, in detail please.", output="t1")
    wf.llm("aside", bystander, "Summarize {topic}.", output="other")
    wf.llm("t2", talker, "Go on.", output="t2")
    wf.llm("t3", talker, "And finally?", output="t3")
    wf.sequence("t1", "aside", "t2", "t3")
    tok = engine.tokenizer
    calls = []                                     # (agent, prompt ids, output)

    async def body(rt):
        original = rt.engine.generate

        async def spy(ids, params, **kw):
            out = await original(ids, params, **kw)
            calls.append((kw["meta"].agent_id, list(ids), out))
            return out

        rt.engine.generate = spy
        return await rt.run(wf)

    result, rec = run_with(engine, body)
    assert result.status == "done", result.error
    talk = [(ids, out) for agent, ids, out in calls if agent == "talker"]
    assert len(talk) == 3
    for (prev_ids, prev_out), (ids, _) in zip(talk, talk[1:]):
        # the previous prompt, then the previous reply (as its text re-renders), then more
        assert ids[:len(prev_ids)] == prev_ids
        reply = tok.encode(prev_out.text, add_special_tokens=False)
        assert ids[len(prev_ids):len(prev_ids) + len(reply)] == reply
        assert len(ids) > len(prev_ids) + len(reply)
    # the other agent has its own conversation: none of the talker's turns in it
    [aside_ids] = [ids for agent, ids, _ in calls if agent == "bystander"]
    aside_text = tok.decode(aside_ids)
    assert "careful assistant" not in aside_text and "You only summarize." in aside_text

    ends = [e for e in rec.of("llm_end") if e.data["agent"] == "talker"]
    assert [e.data["turn"] for e in ends] == [0, 0, 0]        # one generation per step (no tools)
    cached = [e.data["cached_tokens"] for e in ends]
    assert cached[0] == 0                                     # a fresh engine
    block = engine.config.block_size
    for (prev_ids, _), c in zip(talk, cached[1:]):
        assert c > 0
        assert c >= (len(prev_ids) // block) * block - block  # most of the previous prompt was reused
    assert result.cached_tokens == sum(e.data["cached_tokens"] for e in rec.of("llm_end"))
    assert result.hit_rate > 0


def test_fan_out_branches_fork_the_agent_conversation_and_the_join_drops_them(engine):
    class S(BaseModel):
        items: list[str] = ["alpha", "beta"]
        plan: str = ""
        notes: Annotated[list[str], append] = []
        final: str = ""

    wf = Workflow("forks", S)
    lead = Agent("lead", "You lead the team.", params=P(6))
    wf.llm("plan", lead, "Make a plan.", output="plan")
    wf.llm("part", lead, "Work on part {x}.", output="notes")
    wf.llm("final", lead, "Now conclude.", output="final")
    wf.fan_out("plan", over="items", to="part", join="final", item="x")
    calls = []

    async def body(rt):
        original = rt.engine.generate

        async def spy(ids, params, **kw):
            calls.append((kw["meta"].step_id, list(ids)))
            return await original(ids, params, **kw)

        rt.engine.generate = spy
        return await rt.run(wf)

    result, rec = run_with(engine, body)
    assert result.status == "done", result.error
    tok = engine.tokenizer
    by_step = {}
    for step, ids in calls:
        by_step.setdefault(step, []).append(ids)
    [plan_ids], parts, [final_ids] = by_step["plan"], by_step["part"], by_step["final"]
    assert len(parts) == 2
    for ids in parts:                        # each branch continues the lead's conversation
        assert ids[:len(plan_ids)] == plan_ids
    part_texts = sorted(tok.decode(ids) for ids in parts)
    assert "Work on part alpha." in part_texts[0] and "Work on part beta." in part_texts[1]
    # after the join the lead goes on from its own conversation: no branch turn in it
    assert final_ids[:len(plan_ids)] == plan_ids
    final_text = tok.decode(final_ids)
    assert "Work on part" not in final_text and "Now conclude." in final_text
    assert len(result.state.notes) == 2
    ends = {e.data["step"]: e for e in rec.of("llm_end")}
    assert ends["final"].data["cached_tokens"] > 0


# ============================================================================ events and trace
class Traced(BaseModel):
    topic: str = "ants"
    hits: str = ""
    text: str = ""
    n: int = 0


@tool(expected_duration=0.02)
def fetch(topic: str) -> str:
    """Fetch."""
    time.sleep(0.02)
    return f"page about {topic}"


def test_jsonl_trace_and_summary_match_the_results(engine, tmp_path):
    wf = Workflow("traced", Traced, output="text")
    wf.tool("fetch", fetch, {"topic": "{topic}"}, output="hits")
    wf.llm("write", Agent("writer", "You write.", params=P(5)), "Use {hits}", output="text")
    wf.llm("polish", "writer", "Polish it.", output="text")          # the same agent, by name
    wf.python("count", lambda s: {"n": len(s.text)})
    wf.sequence("fetch", "write", "polish", "count")
    path = tmp_path / "run.jsonl"

    async def body(rt):
        t0 = time.monotonic()
        results = await rt.run_many(wf, [{"topic": "ants"}, {"topic": "wasps"}, {}])
        return results, time.monotonic() - t0

    (results, wall), rec = run_with(engine, body, trace=path)
    assert [r.status for r in results] == ["done"] * 3
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]            # every line is one JSON object
    assert len(records) == len(rec.events)
    assert all({"t", "program", "event"} <= set(r) for r in records)
    kinds = {r["event"] for r in records}
    assert {"program_start", "program_end", "step_start", "step_end", "llm_start", "llm_end",
            "tool_start", "tool_end"} <= kinds <= set(EVENT_KINDS)
    for r in results:
        mine = [x for x in records if x["program"] == r.program_id]
        assert mine[0]["event"] == "program_start" and mine[-1]["event"] == "program_end"
        assert mine[0]["state"]["topic"] == r.state.topic        # the state is dumped as JSON
        assert mine[-1]["status"] == "done" and mine[-1]["error"] is None
        ts = [x["t"] for x in mine]
        assert ts == sorted(ts)
        llm_ends = [x for x in mine if x["event"] == "llm_end"]
        assert len(llm_ends) == r.llm_calls == 2
        for x in llm_ends:
            assert isinstance(x["tokens_in"], int) and x["tokens_in"] > 0
            assert x["tokens_out"] == 5 and isinstance(x["cached_tokens"], int)
            assert x["finish_reason"] == "length"
        assert sum(x["tokens_in"] for x in llm_ends) == r.tokens_in
        assert sum(x["tokens_out"] for x in llm_ends) == r.tokens_out == 10
        assert sum(x["cached_tokens"] for x in llm_ends) == r.cached_tokens
        assert llm_ends[1]["cached_tokens"] > 0                  # polish extends write's conversation
        [t_end] = [x for x in mine if x["event"] == "tool_end"]
        assert t_end["tool"] == "fetch" and t_end["attempts"] == 1 and t_end["error"] is None
        assert t_end["duration"] >= 0.02
        assert r.tool_calls == 1 and r.steps == 4 and r.jct > 0
        assert r.state.hits == f"page about {r.state.topic}"

    s = summarize(results, wall)
    assert s["programs"] == 3 and s["done"] == 3 and s["failed"] == 0 and s["cancelled"] == 0
    assert s["llm_calls"] == sum(r.llm_calls for r in results) == 6
    assert s["tool_calls"] == sum(r.tool_calls for r in results) == 3
    assert s["tokens_in"] == sum(r.tokens_in for r in results)
    assert s["tokens_out"] == sum(r.tokens_out for r in results) == 30
    assert s["prefix_hit_rate"] == round(sum(r.cached_tokens for r in results) / s["tokens_in"], 4)
    jcts = sorted(r.jct for r in results)
    assert s["mean_jct_s"] == round(sum(jcts) / 3, 3) and s["p50_jct_s"] == round(jcts[1], 3)
    assert s["output_tokens_per_s"] == round(30 / wall, 2)


def test_summary_counts_failed_and_cancelled(engine):
    wf = Workflow("mixed", Job)
    wf.python("p", lambda s: {"n": 10 // s.n})

    async def body(rt):
        return await rt.run_many(wf, [{"n": 1}, {"n": 0}, {"n": 2}], on_submit=lambda p: p.id == "mixed-2" and p.cancel())

    results, _ = run_with(engine, body)
    s = summarize(results, 1.0)
    assert (s["done"], s["failed"], s["cancelled"]) == (1, 1, 1)
    assert summarize([], 1.0)["programs"] == 0


def test_a_broken_event_sink_is_dropped_and_the_program_still_runs(engine, capsys):
    def broken(event):
        raise RuntimeError("sink down")

    wf = Workflow("sinky", Job)
    wf.python("p", lambda s: {"n": 3})
    result, rec = run_with(engine, lambda rt: rt.run(wf), on_event=[broken])
    assert result.status == "done" and result.state.n == 3
    assert "sink down" in capsys.readouterr().err


# ============================================================================ invalid inputs
def _inputs_workflow():
    wf = Workflow("inputs", Job)
    wf.llm("first", Agent("a", params=P(2)), "Job {n}", output="first")
    return wf


@pytest.mark.parametrize("bad", [
    {"n": "not a number"},        # wrong type
    {"nn": 3},                    # no such field (a typo must not be silently ignored)
    ["n", 3],                     # not a mapping
    "n=3",
    7,
])
def test_submit_rejects_bad_inputs_before_anything_runs(engine, bad):
    async def body(rt):
        with pytest.raises(ValueError) as info:
            rt.submit(_inputs_workflow(), bad)
        assert not rt.programs
        return str(info.value)

    message, rec = run_with(engine, body)
    assert "Job" in message                          # names the state model
    assert rec.events == [] and engine.num_steps == 0


def test_run_many_checks_every_input_before_starting_any(engine):
    async def body(rt):
        with pytest.raises(ValueError, match="n"):
            await rt.run_many(_inputs_workflow(), [{"n": 1}, {"n": 2}, {"n": "three"}])
        with pytest.raises(ValueError):
            await rt.run_many(_inputs_workflow(), {"n": 1})   # one input, not a list of them
        assert not rt.programs
        # the runtime is still usable afterwards
        return await rt.run(_inputs_workflow(), {"n": 4})

    result, rec = run_with(engine, body)
    assert result.status == "done"
    assert {e.program for e in rec.events} == {result.program_id}


def test_duplicate_program_id_and_invalid_workflow_raise_value_error(engine):
    bad_wf = Workflow("broken", Job)
    bad_wf.llm("first", Agent("a", params=P(2)), "Job {missing_field}", output="first")

    async def body(rt):
        p = rt.submit(_inputs_workflow(), {"n": 1}, program_id="same")
        with pytest.raises(ValueError, match="already running"):
            rt.submit(_inputs_workflow(), {"n": 2}, program_id="same")
        with pytest.raises(WorkflowError, match="missing_field"):
            rt.submit(bad_wf)
        with pytest.raises(ValueError):
            await rt.run_many(bad_wf, [{}])
        return await p.result()

    result, rec = run_with(engine, body)
    assert result.status == "done" and result.program_id == "same"
    assert {e.program for e in rec.events} == {"same"}
