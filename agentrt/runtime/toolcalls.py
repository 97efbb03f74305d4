"""Tool calls inside a program: graph-driven tool steps, and the model-driven loop in which an
agent calls tools itself (`<tool_call>{...}</tool_call>`) until it answers or runs out of turns."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel

from agentrt.engine.params import SamplingParams
from agentrt.graph.state import render
from agentrt.graph.steps import Agent, LLMStep, ToolStep
from agentrt.runtime.conversation import Conversation
from agentrt.runtime.errors import ProgramError
from agentrt.sched.events import ToolEnded, ToolProgress, ToolStarted
from agentrt.tools.context import CallInfo, CallSite, reset_site, set_site
from agentrt.tools import (TOOL_CALL_CLOSE, Tool, ToolResult, format_observation, parse_tool_call,
                           render_tool_instructions, resolve_call, tools_by_name)

OBSERVATION_CHARS = 1500        # a tool result longer than this is cut before the agent reads it


class ToolCaller:
    def __init__(self, program):
        self.program = program

    def system_prompt(self, agent: Agent) -> str:
        if not agent.tools:
            return agent.system
        return f"{agent.system}\n\n{render_tool_instructions(agent.tools)}".strip()

    async def call(self, tool: Tool, arguments: Any, step: str) -> ToolResult:
        """Run a tool with its timeout and retries, reporting each attempt; in a durable run,
        through the journal (a call whose result it holds is not made again)."""
        prog = self.program
        journal = prog.rt.journal
        if journal is None:
            return await self._make(tool, arguments, step, None)
        call_id = prog.next_call_id()
        result, replayed = await journal.call(prog.id, call_id, tool, step,
                                              lambda info: self._make(tool, arguments, step, info))
        if replayed:
            prog.emit("tool_replayed", step=step, tool=tool.name, call=call_id, error=result.error)
        return result

    async def _make(self, tool: Tool, arguments: Any, step: str, info: CallInfo | None) -> ToolResult:
        prog = self.program
        prog.counts["tool_calls"] += 1
        prog._publish(ToolStarted(prog.id, tool.name, step, prog.clock.now(), tool.expected_duration))
        prog.emit("tool_start", step=step, tool=tool.name, expected_duration=tool.expected_duration,
                  # validated arguments by their parameter names (a field may be renamed, e.g. `schema`
                  # is held as `arg0__` because it clashes with pydantic; its alias is the name)
                  arguments=arguments.model_dump(by_alias=True) if isinstance(arguments, BaseModel) else dict(arguments))

        def on_attempt(attempt: int, error: BaseException | None, seconds: float) -> None:
            if error is not None and attempt <= tool.retries:
                prog.emit("tool_retry", step=step, tool=tool.name, attempt=attempt,
                          error=f"{type(error).__name__}: {error}", wait=tool.retry_delay(attempt))

        def progressed(fraction: float | None, eta: float | None, message: str | None) -> None:
            prog._publish(ToolProgress(prog.id, tool.name, step, prog.clock.now(), fraction, eta))
            prog.emit("tool_progress", step=step, tool=tool.name, fraction=fraction, eta_seconds=eta, message=message)

        loop, here = asyncio.get_running_loop(), threading.get_ident()
        on_progress = lambda *report: progressed(*report) if threading.get_ident() == here \
            else loop.call_soon_threadsafe(progressed, *report)            # a sync tool reports from its thread
        site = set_site(CallSite(prog.id, step, tool.name, on_progress))   # report_progress(), remote calls
        try:
            result = await tool.run(arguments, on_attempt=on_attempt, clock=prog.clock, call=info)
        finally:
            reset_site(site)
        prog._publish(ToolEnded(prog.id, tool.name, step, prog.clock.now(), result.duration, result.error))
        prog.emit("tool_end", step=step, tool=tool.name, duration=round(result.duration, 6),
                  attempts=result.attempts, error=result.error)
        return result

    async def step(self, step: ToolStep, scope: dict[str, Any], view: Any) -> Any:
        """A graph-driven tool step: its result, or the error text (on_error="observe")."""
        args = {k: _argument(v, scope, view) for k, v in step.args.items()}
        result = await self.call(self.program.wf.tools[step.tool], args, step.name)
        if result.ok:
            return result.value
        if (step.on_error or self.program.wf.on_tool_error) == "fail":
            raise ProgramError(step.name, f"tool failed: {result.error}")
        return f"error: {result.error}"

    async def agent_loop(self, step: LLMStep, agent: Agent, conv: Conversation,
                         params: SamplingParams) -> str:
        """Generate; while the reply is a tool call, run it and feed the result back. A malformed
        or unknown call is fed back as an error, never raised. Returns the final answer."""
        prog = self.program
        params = params.model_copy(update={"stop": [*params.stop, TOOL_CALL_CLOSE]})
        tools = tools_by_name(agent.tools)
        for turn in range(agent.max_turns):
            out = await prog.turns.generate(step, agent, conv, params, turn)
            conv.add_assistant(out.text)
            parsed = parse_tool_call(out.text)
            if parsed.call is None and parsed.error is None:
                return out.text                                   # a plain answer: done
            if turn == agent.max_turns - 1:
                prog.emit("warning", step=step.name, agent=agent.name,
                          message=f"agent {agent.name!r} still calling tools after max_turns={agent.max_turns}; "
                                  f"its last reply is the step's result")
                return parsed.content or out.text
            await self._observe(parsed, tools, conv, step.name)
        raise AssertionError("unreachable")

    async def _observe(self, parsed, tools: dict[str, Tool], conv: Conversation, step: str) -> None:
        if parsed.error is not None:
            conv.add_observation(None, parsed.error)
            self.program.emit("warning", step=step, message=f"malformed tool call: {parsed.error}")
            return
        resolved = resolve_call(parsed.call, tools)
        if isinstance(resolved, str):
            conv.add_observation(None, resolved)
            self.program.emit("warning", step=step, message=resolved)
            return
        tool, args = resolved
        result = await self.call(tool, args, step)
        text = format_observation(result.value, OBSERVATION_CHARS) if result.ok else f"error: {result.error}"
        conv.add_observation(tool.name, text)


def _argument(value: Any, scope: dict[str, Any], view: Any) -> Any:
    if isinstance(value, str):
        return render(value, scope)
    return value(view) if callable(value) else value
