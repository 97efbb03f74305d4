"""Tools inside programs: graph-driven tool steps (arguments, retries with backoff, timeouts, what
happens once retries are exhausted) on the tiny model, and the model-driven `<tool_call>` loop on
a scripted stand-in engine (the tiny model's random bytes never form a tool call)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from agentrt import Agent, Runtime, Workflow, append, tool
from agentrt.engine import SamplingParams
from agentrt.tools import TOOL_CALL_CLOSE
from runtime_helpers import P, Recorder, ScriptedEngine, arun


@pytest.fixture
def engine(make_engine):
    return make_engine(kv_cache_tokens=2048)


def run_with(engine, body, **runtime_kw):
    rec = Recorder()

    async def main():
        async with Runtime(engine, on_event=[rec], **runtime_kw) as rt:
            return await body(rt)

    return arun(main()), rec


# ============================================================================ graph-driven tool steps
class Doc(BaseModel):
    topic: str = "bees"
    k: int = 3
    result: dict = {}
    text: str = ""
    status: str = ""
    items: list[str] = ["x", "yy"]
    per_item: Annotated[list[str], append] = []


@tool
def describe(text: str, n: int, tags: list[str], flag: bool = False) -> dict:
    """Echo the arguments back."""
    return {"text": text, "n": n, "tags": tags, "flag": flag}


def test_tool_step_arguments_from_templates_callables_and_literals(engine):
    wf = Workflow("args", Doc, output="result")
    wf.python("prep", lambda s: {"k": s.k + 1})
    wf.tool("call", describe, {"text": "about {topic} (k={k})", "n": lambda s: s.k * 10,
                               "tags": ["lit", "eral"], "flag": True}, output="result")
    wf.edge("prep", "call")
    result, rec = run_with(engine, lambda rt: rt.run(wf, {"topic": "wasps"}))
    assert result.status == "done", result.error
    expected = {"text": "about wasps (k=4)", "n": 40, "tags": ["lit", "eral"], "flag": True}
    assert result.output == result.state.result == expected
    [start] = rec.of("tool_start")
    assert start.data["tool"] == "describe" and start.data["step"] == "call"
    assert start.data["arguments"] == expected
    [end] = rec.of("tool_end")
    assert end.data["attempts"] == 1 and end.data["error"] is None
    assert result.tool_calls == 1 and result.llm_calls == 0


def test_tool_step_in_a_fan_out_sees_the_item_in_templates_and_callables(engine):
    @tool
    async def measure(word: str, length: int) -> str:
        """Async tool."""
        await asyncio.sleep(0.02)
        return f"{word}:{length}"

    wf = Workflow("fanargs", Doc, output="per_item")
    wf.python("start", lambda s: None)
    wf.tool("measure", measure, {"word": "<{w}>", "length": lambda s: len(s.w)}, output="per_item")
    wf.python("join", lambda s: None)
    wf.fan_out("start", over="items", to="measure", join="join", item="w")
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    assert result.state.per_item == ["<x>:1", "<yy>:2"]


def test_tool_step_with_arguments_that_do_not_validate_observes_the_error(engine):
    wf = Workflow("badargs", Doc)
    wf.tool("call", describe, {"text": "{topic}", "n": "not a number", "tags": []}, output="text")
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    assert result.state.text.startswith("error: tool 'describe': argument 'n'")
    [end] = rec.of("tool_end")
    assert end.data["attempts"] == 0                         # the tool never ran


def test_tool_result_feeds_a_following_llm_step(engine):
    @tool
    def fetch(topic: str) -> str:
        """Fetch."""
        return f"facts about {topic}"

    wf = Workflow("feed", Doc, output="text")
    wf.tool("fetch", fetch, {"topic": "{topic}"}, output="status")
    wf.llm("write", Agent("w", params=P(4)), "Use: {status}", output="text")
    wf.edge("fetch", "write")
    prompts = []

    async def body(rt):
        original = rt.engine.generate

        async def spy(ids, params, **kw):
            prompts.append(rt.tokenizer.decode(ids))
            return await original(ids, params, **kw)

        rt.engine.generate = spy
        return await rt.run(wf)

    result, _ = run_with(engine, body)
    assert result.status == "done" and result.state.status == "facts about bees"
    assert "Use: facts about bees" in prompts[0]


# ------------------------------------------------------------------ retries, backoff, timeouts
def flaky_tool(failures: int, **settings):
    calls = []

    @tool(**settings)
    def flaky(q: str) -> str:
        """Fails `failures` times, then works."""
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise ConnectionError(f"try {len(calls)} failed")
        return f"ok:{q}"

    return flaky, calls


def test_retries_with_backoff_then_success(engine):
    flaky, calls = flaky_tool(2, retries=2, backoff=0.02)
    wf = Workflow("retry", Doc, output="text")
    wf.tool("call", flaky, {"q": "{topic}"}, output="text")
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done", result.error
    assert result.output == "ok:bees"
    retries = rec.of("tool_retry")
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert [e.data["wait"] for e in retries] == [0.02, 0.04]           # exponential backoff
    assert all("ConnectionError" in e.data["error"] for e in retries)
    assert "try 1 failed" in retries[0].data["error"]
    [end] = rec.of("tool_end")
    assert end.data["attempts"] == 3 and end.data["error"] is None
    assert len(calls) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04                        # the waits really happened
    assert end.data["duration"] >= 0.06
    assert result.tool_calls == 1                                     # one call, three attempts


def test_timeout_applies_per_attempt(engine):
    attempts = []

    @tool(timeout=0.05, retries=1, backoff=0.01)
    async def slow(q: str) -> str:
        """Too slow the first time."""
        attempts.append(q)
        await asyncio.sleep(1.0 if len(attempts) == 1 else 0.03)
        return "finally"

    wf = Workflow("timeout", Doc, output="text")
    wf.tool("call", slow, {"q": "{topic}"}, output="text")
    t0 = time.monotonic()
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert time.monotonic() - t0 < 0.8
    assert result.status == "done" and result.output == "finally"
    [retry] = rec.of("tool_retry")
    assert "timed out" in retry.data["error"] and "ToolTimeoutError" in retry.data["error"]
    [end] = rec.of("tool_end")
    assert end.data["attempts"] == 2 and end.data["error"] is None


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_timeout_when_every_attempt_is_too_slow(engine, kind):
    if kind == "async":
        @tool(timeout=0.05)
        async def slow(q: str) -> str:
            """Never in time."""
            await asyncio.sleep(2.0)
            return q
    else:
        @tool(timeout=0.05)
        def slow(q: str) -> str:
            """Never in time (its thread is abandoned, and finishes later)."""
            time.sleep(0.2)
            return q

    wf = Workflow("timeout2", Doc)
    wf.tool("call", slow, {"q": "x"}, output="text")
    wf.python("after", lambda s: {"status": "continued"})
    wf.edge("call", "after")
    result, rec = run_with(engine, lambda rt: rt.run(wf))
    assert result.status == "done"
    [end] = rec.of("tool_end")
    assert "timed out" in end.data["error"] and end.data["attempts"] == 1
    assert end.data["duration"] < 0.15
    assert result.state.text == f"error: {end.data['error']}" == "error: slow timed out after 0.05 s"
    assert result.state.status == "continued"


def _always_failing(retries=1):
    @tool(retries=retries, backoff=0.01)
    def broken(q: str) -> str:
        """Always fails (for q != 'ok')."""
        if q != "ok":
            raise ValueError(f"cannot handle {q}")
        return "fine"
    return broken


def _failing_workflow(on_tool_error="observe", step_on_error=None):
    wf = Workflow("fails", Doc, on_tool_error=on_tool_error)
    wf.tool("call", _always_failing(), {"q": "{topic}"}, output="text", on_error=step_on_error)
    wf.python("after", lambda s: {"status": "continued"})
    wf.edge("call", "after")
    return wf


def test_exhausted_retries_with_observe_write_the_error_and_continue(engine):
    result, rec = run_with(engine, lambda rt: rt.run(_failing_workflow("observe")))
    assert result.status == "done" and result.error is None
    assert result.state.text == "error: broken raised ValueError: cannot handle bees (2 attempts)"
    assert result.state.status == "continued"
    [end] = rec.of("tool_end")
    assert end.data["attempts"] == 2 and "cannot handle bees" in end.data["error"]
    assert len(rec.of("tool_retry")) == 1


@pytest.mark.parametrize("workflow_setting, step_setting, fails", [
    ("fail", None, True),             # the workflow's setting
    ("observe", "fail", True),        # a step overrides it ...
    ("fail", "observe", False),       # ... both ways
])
def test_fail_setting_fails_only_the_program_whose_tool_failed(engine, workflow_setting, step_setting, fails):
    wf = _failing_workflow(workflow_setting, step_setting)
    results, rec = run_with(engine, lambda rt: rt.run_many(wf, [{"topic": "ok"}, {"topic": "bees"}, {"topic": "ok"}]))
    good1, bad, good2 = results
    for r in (good1, good2):
        assert r.status == "done" and r.state.text == "fine" and r.state.status == "continued"
    if fails:
        assert bad.status == "failed"
        assert bad.error.startswith("step 'call': tool failed:") and "cannot handle bees" in bad.error
        assert bad.state.status == ""                     # the following step never ran
        assert [e.program for e in rec.of("error")] == [bad.program_id]
    else:
        assert bad.status == "done" and bad.state.text.startswith("error: broken raised ValueError")
        assert bad.state.status == "continued"


# ============================================================================ model-driven tool calling
class Ask(BaseModel):
    question: str = "What do bees make?"
    answer: str = ""
    followup: str = ""


def call(name: str, args: dict[str, Any], before: str = "") -> str:
    """A reply holding one tool call, as the model would write it (the close tag included: the
    scripted engine cuts it off as the real one does, since it is a stop string)."""
    return f'{before}<tool_call>{json.dumps({"name": name, "arguments": args})}{TOOL_CALL_CLOSE}'


def search_tool(log: list):
    @tool(expected_duration=0.01)
    async def search(query: str, k: int = 1) -> str:
        """Search the notes."""
        log.append((query, k))
        await asyncio.sleep(0.01)
        return f"found {k} note(s) about {query}"
    return search


def agent_workflow(agent: Agent, followup: bool = False, on_tool_error: str = "observe") -> Workflow:
    wf = Workflow("agentic", Ask, output="answer", on_tool_error=on_tool_error)
    wf.llm("answer", agent, "Question: {question}", output="answer")
    if followup:
        wf.llm("followup", agent.name, "Anything else?", output="followup")
        wf.edge("answer", "followup")
    return wf


def run_scripted(script, wf, inputs=None, **engine_kw):
    eng = ScriptedEngine(script, **engine_kw)
    rec = Recorder()

    async def main():
        async with Runtime(eng, on_event=[rec]) as rt:
            assert rt.engine is eng and rt.tokenizer is eng.tokenizer    # used as it is
            return await rt.run(wf, inputs)

    result = arun(main())
    assert eng.closed is False          # the runtime closes only engines it made itself
    return result, rec, eng


def test_runtime_accepts_any_engine_with_the_async_engine_interface():
    result, rec, eng = run_scripted(["plain answer"], agent_workflow(Agent("plain", "Be plain.", params=P(8))))
    assert result.status == "done" and result.output == "plain answer"
    [c] = eng.calls
    meta = c["meta"]
    assert (meta.program_id, meta.agent_id, meta.step_id) == (result.program_id, "plain", "answer")
    assert isinstance(meta.program_arrival, float)
    assert c["request_id"] == f"{result.program_id}/answer/0"
    assert c["prompt"].startswith("<|im_start|>system\nBe plain.<|im_end|>\n")
    assert c["prompt"].endswith("<|im_start|>user\nQuestion: What do bees make?<|im_end|>\n<|im_start|>assistant\n")
    assert c["params"] == P(8)                              # no tools: params untouched
    assert result.tokens_out == len("plain answer")


def test_well_formed_call_runs_the_tool_and_feeds_the_result_back():
    log = []
    agent = Agent("researcher", "You research.", params=SamplingParams(max_tokens=64, stop=["\n\nEND"]),
                  tools=[search_tool(log)])
    script = [call("search", {"query": "bees", "k": 2}, before="Let me check. "), "Bees make honey."]
    result, rec, eng = run_scripted(script, agent_workflow(agent))
    assert result.status == "done", result.error
    assert result.output == result.state.answer == "Bees make honey."
    assert log == [("bees", 2)]
    assert len(eng.calls) == 2 and result.llm_calls == 2 and result.tool_calls == 1

    first, second = eng.prompt_text(0), eng.prompt_text(1)
    assert "You can use these tools:" in first and "search(query: str, k: int = 1)" in first
    # the second prompt extends the first: the call (its close tag restored), then the result
    assert eng.calls[1]["ids"][:len(eng.calls[0]["ids"])] == eng.calls[0]["ids"]
    assert second.startswith(first)
    assert 'Let me check. <tool_call>{"name": "search", "arguments": {"query": "bees", "k": 2}}</tool_call>' \
           "<|im_end|>" in second
    assert "Result of search:\nfound 2 note(s) about bees" in second
    # the stop string is added for every generation; the agent's own stop strings are kept
    for c in eng.calls:
        assert c["params"].stop == ["\n\nEND", TOOL_CALL_CLOSE]
        assert c["params"].max_tokens == 64
    assert agent.params.stop == ["\n\nEND"]                 # the agent's params are not changed

    [start] = rec.of("tool_start")
    assert start.data["tool"] == "search" and start.data["arguments"] == {"query": "bees", "k": 2}
    assert start.data["step"] == "answer" and start.data["expected_duration"] == 0.01
    assert [e.data["turn"] for e in rec.of("llm_end")] == [0, 1]
    assert rec.of("warning") == []
    # the step ran once, with two generations in it
    assert rec.steps_started() == ["answer"] and result.steps == 1


def test_malformed_and_unknown_calls_become_error_observations():
    log = []
    agent = Agent("researcher", "You research.", params=P(64), tools=[search_tool(log)], max_turns=4)
    script = [
        '<tool_call>{"name": "search", "arguments": {"query": bees}}</tool_call>',      # bad JSON
        call("browse", {"url": "http://example.com"}),                                    # no such tool
        call("search", {"query": "bees", "limit": 5}),                                   # bad argument
        "Honey, as far as I can tell.",
    ]
    result, rec, eng = run_scripted(script, agent_workflow(agent))
    assert result.status == "done", result.error
    assert result.output == "Honey, as far as I can tell."
    assert log == [] and result.tool_calls == 0 and rec.of("tool_start") == []
    assert len(eng.calls) == 4

    after_bad_json = eng.prompt_text(1)
    assert "Tool call error:\nYour tool call could not be read: the JSON is invalid" in after_bad_json
    after_unknown = eng.prompt_text(2)
    assert "Tool call error:\nUnknown tool 'browse'. Available tools: search." in after_unknown
    after_bad_args = eng.prompt_text(3)
    assert "Invalid arguments for tool 'search': unexpected argument 'limit'" in after_bad_args
    for i in range(1, 4):                                   # still append-only
        assert eng.prompt_text(i).startswith(eng.prompt_text(i - 1))
    warnings = [e.data["message"] for e in rec.of("warning")]
    assert len(warnings) == 3
    assert warnings[0].startswith("malformed tool call") and "browse" in warnings[1]


def test_an_agent_that_keeps_calling_tools_stops_at_max_turns():
    log = []
    agent = Agent("looper", "You research.", params=P(64), tools=[search_tool(log)], max_turns=3)
    script = [call("search", {"query": "more"}, before="Still thinking.")]
    result, rec, eng = run_scripted(script, agent_workflow(agent, followup=True), repeat_last=True)
    assert result.status == "done", result.error
    # three generations for the first step; the last call is not run: two tool calls
    answer_calls = [c for c in eng.calls if c["meta"].step_id == "answer"]
    assert len(answer_calls) == 3 and [e.data["turn"] for e in rec.of("llm_start") if e.data["step"] == "answer"] \
        == [0, 1, 2]
    warnings = rec.of("warning")
    assert warnings[0].data["step"] == "answer" and warnings[0].data["agent"] == "looper"
    assert "max_turns=3" in warnings[0].data["message"]
    assert result.state.answer == "Still thinking."          # the text before the unanswered call
    # the next step of the same agent goes on with the same conversation (and loops the same way)
    followup_calls = [c for c in eng.calls if c["meta"].step_id == "followup"]
    assert len(followup_calls) == 3
    assert followup_calls[0]["prompt"].startswith(answer_calls[-1]["prompt"])
    assert "Anything else?" in followup_calls[0]["prompt"]
    assert [w.data["step"] for w in warnings] == ["answer", "followup"]
    assert log == [("more", 1)] * 4 and result.tool_calls == 4 and result.llm_calls == 6


def test_model_driven_tool_failure_is_observed_not_fatal():
    @tool(retries=0)
    def lookup(key: str) -> str:
        """Always broken."""
        raise KeyError(key)

    agent = Agent("a", params=P(32), tools=[lookup])
    wf = agent_workflow(agent, on_tool_error="fail")     # applies to graph-driven tool steps only
    result, rec, eng = run_scripted([call("lookup", {"key": "k1"}), "gave up"], wf)
    assert result.status == "done" and result.output == "gave up"
    assert "Result of lookup:\nerror: lookup raised KeyError: 'k1'" in eng.prompt_text(1)
    [end] = rec.of("tool_end")
    assert end.data["error"] == "lookup raised KeyError: 'k1'"


def test_model_driven_tools_in_concurrent_programs_keep_separate_conversations():
    log = []
    agent = Agent("r", params=P(32), tools=[search_tool(log)])
    wf = agent_workflow(agent)
    eng = ScriptedEngine([call("search", {"query": "first"}), call("search", {"query": "second"}),
                          "answer one", "answer two"], delay=0.02)

    async def main():
        async with Runtime(eng) as rt:
            return await rt.run_many(wf, [{"question": "Q1?"}, {"question": "Q2?"}])

    r1, r2 = arun(main())
    assert r1.status == r2.status == "done"
    assert {r1.output, r2.output} == {"answer one", "answer two"}
    assert sorted(log) == [("first", 1), ("second", 1)]
    by_program = {}
    for c in eng.calls:
        by_program.setdefault(c["meta"].program_id, []).append(c["prompt"])
    for pid, prompts in by_program.items():
        assert len(prompts) == 2 and prompts[1].startswith(prompts[0])
        q = "Q1?" if pid == r1.program_id else "Q2?"
        other = "Q2?" if q == "Q1?" else "Q1?"
        assert q in prompts[1] and other not in prompts[1]


def test_tool_start_reports_model_driven_arguments_by_their_parameter_names():
    """Regression: `schema` clashes with pydantic, so the arguments model holds it as `arg0__`;
    the tool_start event showed that internal name instead of the parameter's."""
    seen = []

    @tool
    def validate_doc(schema: str, model_name: str = "m") -> str:
        """Check a document against a schema."""
        seen.append((schema, model_name))
        return "valid"

    agent = Agent("checker", params=P(32), tools=[validate_doc])
    script = [call("validate_doc", {"schema": "s.json", "model_name": "tiny"}), "It is valid."]
    result, rec, eng = run_scripted(script, agent_workflow(agent))
    assert result.status == "done" and seen == [("s.json", "tiny")]
    [start] = rec.of("tool_start")
    assert start.data["arguments"] == {"schema": "s.json", "model_name": "tiny"}
    json.loads(start.to_json())
