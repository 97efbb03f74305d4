"""Programs from what requests carry: a program id (`program_id`, `job_id` or `X-Program-Id`), an
agent id, `is_last_step`. The tracker turns each program's requests into the scheduler's typed
events (agentrt.sched.events), so programs written in any framework get program-level order,
tool-pause pins, next-use eviction and prefetch.

* A program's first request starts it (`ProgramStarted`, with its node graph when the client sent
  one, else a `SessionGraph`); each request is one step of its agent (`StepStarted`/`StepEnded`)
  and one LLM call.
* A reply that ends in a tool call (the tool from `tool_calls`, or the first word of a fenced bash
  block, as Continuum's mini-swe-agent clients produce) pauses the program on that tool
  (`ToolStarted`: where continuum and agentrt pin its blocks); its next request ends the pause
  (`ToolEnded`, which teaches the predictor the tool's duration).
* `is_last_step`, `POST /v1/programs/{id}/end`, or `idle_timeout` seconds without a request end it.

Requests without a program id are plain requests, as in vLLM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agentrt.engine.request import RequestMeta
from agentrt.sched.events import (LLMCallEnded, LLMCallStarted, ProgramEnded, ProgramGraph, ProgramStarted,
                                  StepEnded, StepStarted, ToolEnded, ToolStarted)
from agentrt.server.graphs import SessionGraph

DEFAULT_AGENT = "agent"
_BASH_BLOCK = re.compile(r"```(?:bash|sh|shell|console)[ \t]*\r?\n\s*(?:\$\s*)?([^\s`;|&]+)", re.IGNORECASE)


class ProgramIds(NamedTuple):
    program_id: str | None
    agent_id: str | None = None
    is_last_step: bool = False
    graph: ProgramGraph | None = None


def tool_of_reply(content: str | None, tool_names: list[str]) -> str | None:
    """The tool a reply hands control to: its first tool call, else the first word of its first
    fenced bash block (Continuum's rule), else None."""
    if tool_names:
        return tool_names[0]
    if content:
        m = _BASH_BLOCK.search(content)
        if m:
            return m.group(1)[:64]
    return None


@dataclass(slots=True)
class _Program:
    arrival: float
    graph: ProgramGraph
    last_seen: float
    inflight: int = 0
    requests: int = 0
    open_tools: list[tuple[str, float, str]] = field(default_factory=list)   # (tool, since, calling agent)
    contexts: dict[str, list[int]] = field(default_factory=dict)             # agent -> its last prompt + reply


class _Prompts:
    """The PromptSource of one program: what each agent sent and got last (its next prompt's prefix)."""

    def __init__(self, program: _Program):
        self.program = program

    def prompts_of(self, agents) -> list[list[int]]:
        return [self.program.contexts[a] for a in agents if a in self.program.contexts]


class ProgramTracker:
    """`door`: the WorkflowScheduler (None: no policy; programs still order and name blocks)."""

    def __init__(self, door, clock, *, end_program=None, idle_timeout: float = 600.0, max_programs: int = 10_000):
        self.door, self.clock, self._end_engine = door, clock, end_program
        self.idle_timeout, self.max_programs = idle_timeout, max_programs
        self.programs: dict[str, _Program] = {}
        self.started = self.ended = self.pauses = 0

    def _publish(self, event) -> None:
        if self.door is not None:
            self.door.publish(event)

    @property
    def paused(self) -> int:
        """Programs waiting on a tool now."""
        return sum(1 for p in self.programs.values() if p.open_tools and not p.inflight)

    # ---------------------------------------------------------------- per request
    def begin(self, ids: ProgramIds, request_id: str, prompt_ids: list[int]) -> RequestMeta | None:
        pid = ids.program_id
        if pid is None:
            return None
        now = self.clock.now()
        prog = self.programs.get(pid)
        if prog is None:
            if len(self.programs) >= self.max_programs:
                self._evict_idlest()
            graph = ids.graph if ids.graph is not None else SessionGraph()
            prog = self.programs[pid] = _Program(now, graph, now)
            self.started += 1
            self._publish(ProgramStarted(pid, now, now, graph=graph, prompts=_Prompts(prog)))
        agent = ids.agent_id or DEFAULT_AGENT
        if isinstance(prog.graph, SessionGraph):
            prog.graph.saw(agent)
        for tool, since, step in prog.open_tools:      # the client ran the tool: this is its result
            self._publish(ToolEnded(pid, tool, step, now, now - since))
        prog.open_tools.clear()
        prog.inflight += 1
        prog.requests += 1
        prog.last_seen = now
        if prog.graph.has_step(agent):
            self._publish(StepStarted(pid, agent, now))
        self._publish(LLMCallStarted(pid, request_id, agent, agent, len(prompt_ids), now))
        return RequestMeta(pid, agent, agent, prog.arrival)

    def finish(self, ids: ProgramIds, request_id: str, prompt_ids: list[int], output_ids: list[int],
               cached_tokens: int, tool: str | None) -> None:
        """The request ended (`tool`: the tool its reply calls, None if none or if it failed)."""
        pid = ids.program_id
        prog = self.programs.get(pid) if pid is not None else None
        if prog is None:
            return
        now = self.clock.now()
        agent = ids.agent_id or DEFAULT_AGENT
        prog.inflight -= 1
        prog.last_seen = now
        prog.contexts[agent] = list(prompt_ids) + list(output_ids)
        self._publish(LLMCallEnded(pid, request_id, agent, agent, len(prompt_ids), len(output_ids),
                                   cached_tokens, now))
        if prog.graph.has_step(agent):
            self._publish(StepEnded(pid, agent, now))
        if ids.is_last_step:
            self.end(pid)
        elif tool is not None:
            prog.open_tools.append((tool, now, agent))
            self.pauses += 1
            self._publish(ToolStarted(pid, tool, agent, now))

    # ---------------------------------------------------------------- program ends
    def end(self, program_id: str, status: str = "done") -> bool:
        """End a program now (False: not known). Its requests still running finish normally."""
        prog = self.programs.pop(program_id, None)
        if prog is None:
            return False
        self.ended += 1
        self._publish(ProgramEnded(program_id, status, self.clock.now()))
        if self._end_engine is not None:
            self._end_engine(program_id)
        return True

    def reap(self) -> list[str]:
        """End programs idle (no request in flight) for idle_timeout seconds; returns their ids."""
        cutoff = self.clock.now() - self.idle_timeout
        idle = [pid for pid, p in self.programs.items() if not p.inflight and p.last_seen <= cutoff]
        for pid in idle:
            self.end(pid)
        return idle

    def _evict_idlest(self) -> None:
        idle = [(p.last_seen, pid) for pid, p in self.programs.items() if not p.inflight]
        if idle:
            self.end(min(idle)[1])

    def describe(self, program_id: str) -> dict[str, Any] | None:
        prog = self.programs.get(program_id)
        if prog is None:
            return None
        pin = self.door.pinned_until(program_id) if self.door is not None else None
        now = self.clock.now()
        return {"id": program_id, "requests": prog.requests, "inflight": prog.inflight,
                "age_s": round(now - prog.arrival, 3), "idle_s": round(now - prog.last_seen, 3),
                "paused_on": [t for t, _, _ in prog.open_tools],
                "pinned_for_s": round(pin - now, 3) if pin is not None and pin > now else 0.0,
                "graph": type(prog.graph).__name__}
