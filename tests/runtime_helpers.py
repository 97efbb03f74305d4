"""Helpers shared by test_runtime.py and test_runtime_tools.py.

* `P(n)`              SamplingParams for exactly n generated tokens (ignore_eos), so lengths are fixed
* `Recorder`          an event sink that keeps every Event, with small query helpers
* `ScriptedEngine`    a stand-in for AsyncLLMEngine that answers with scripted texts in order and
                      records every prompt and SamplingParams it was given (the tiny model's text is
                      random bytes, so it can never produce a tool call)
* `arun(coro)`        asyncio.run
* `sched_event(...)`  a typed scheduler event (agentrt.sched.events) from a short keyword form
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from agentrt.engine import SamplingParams
from agentrt.engine.request import RequestOutput
from agentrt.engine.tiny import byte_tokenizer
from agentrt.runtime import Event
from agentrt.sched import events as sev


def P(n: int = 4) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def arun(coro):
    return asyncio.run(coro)


class Recorder:
    """on_event sink: every event in arrival order."""

    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str, program: str | None = None) -> list[Event]:
        return [e for e in self.events if e.event == kind and (program is None or e.program == program)]

    def kinds(self, program: str | None = None) -> list[str]:
        return [e.event for e in self.events if program is None or e.program == program]

    def steps_started(self, program: str | None = None) -> list[str]:
        return [e.data["step"] for e in self.of("step_start", program)]

    def index(self, kind: str, pred: Callable[[Event], bool] = lambda e: True) -> list[int]:
        return [i for i, e in enumerate(self.events) if e.event == kind and pred(e)]


class ScriptedEngine:
    """Duck-typed AsyncLLMEngine: `tokenizer`, `async generate(ids, params, meta=, request_id=)`,
    `async close()`. Replies are taken from `script` in order (the last one repeats when it runs
    out, if `repeat_last`). Stop strings in params are honoured as the real engine does: the text
    is cut before the first one and finish_reason is "stop"."""

    def __init__(self, script: Iterable[str], *, repeat_last: bool = False, delay: float = 0.0):
        self.tokenizer = byte_tokenizer()
        self.script = list(script)
        self.repeat_last = repeat_last
        self.delay = delay
        self.calls: list[dict] = []          # {"ids", "params", "meta", "request_id", "prompt"}
        self.closed = False
        self._last_prompt: list[int] = []

    def prompt_text(self, i: int) -> str:
        return self.calls[i]["prompt"]

    async def generate(self, ids, params, meta=None, request_id=None) -> RequestOutput:
        ids = list(ids)
        self.calls.append({"ids": ids, "params": params, "meta": meta, "request_id": request_id,
                           "prompt": self.tokenizer.decode(ids)})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            text = self.script.pop(0) if (len(self.script) > 1 or not self.repeat_last) else self.script[0]
        else:
            raise AssertionError(f"ScriptedEngine ran out of replies at call {len(self.calls)}")
        finish = "length"
        for s in params.stop:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        out_ids = self.tokenizer.encode(text, add_special_tokens=False)
        cached = 0                                   # a plausible prefix-cache hit: the shared prefix
        for a, b in zip(self._last_prompt, ids):
            if a != b:
                break
            cached += 1
        self._last_prompt = ids
        return RequestOutput(request_id or f"scripted-{len(self.calls)}", ids, out_ids, text, True,
                             finish, cached, {"arrival_time": 0.0, "num_preemptions": 0})

    async def close(self) -> None:
        self.closed = True


def sched_event(pid: str, kind: str, t: float = 0.0, loops=None, /, **d):
    """`kind` is the user event's name (step_start, tool_end, llm_start, program_end, ...)."""
    loops = dict(loops or {})
    build = {
        "step_start": lambda: sev.StepStarted(pid, d["step"], t, loops),
        "step_end": lambda: sev.StepEnded(pid, d["step"], t, loops),
        "tool_start": lambda: sev.ToolStarted(pid, d["tool"], d.get("step"), t, d.get("expected_duration")),
        "tool_end": lambda: sev.ToolEnded(pid, d["tool"], d.get("step"), t, d["duration"], d.get("error")),
        "llm_start": lambda: sev.LLMCallStarted(pid, d["request_id"], d.get("agent"), d.get("step"),
                                                d.get("tokens_in", 0), t),
        "llm_end": lambda: sev.LLMCallEnded(pid, d["request_id"], d.get("agent"), d.get("step"), d["tokens_in"],
                                            d["tokens_out"], d.get("cached_tokens", 0), t),
        "program_end": lambda: sev.ProgramEnded(pid, d["status"], t),
    }
    return build[kind]()
