"""The program table: what the runtime's events say about every program, in the form the KV
policies read it (from the engine thread, without locks: each program's entry is replaced
whole, never edited in place)."""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agentrt.sched.predictor import ToolPausePredictor

INF = math.inf


@dataclass(slots=True, frozen=True)
class ProgramEntry:
    """One program as the policies see it."""
    program_id: str
    arrival: float
    steps_to_execution: dict[str, int]       # agent -> steps until its next turn (absent: never again)
    remaining_turns: float
    paused_tool: str | None = None           # the tool the program waits on, if any
    paused_since: float | None = None
    pin_until: float | None = None           # a TTL pin on its blocks, when a policy set one
    context_tokens: int = 0                  # prompt + output tokens of its latest agent turn
    finished: bool = False


@dataclass(slots=True)
class _Live:
    workflow: Any
    frontier: Counter = field(default_factory=Counter)
    program: Any = None                          # for its loop counts (bounded loops used up)


class _Entries(dict):
    """Program entries with a version bumped on every write (cached rankings check it)."""
    version = 0

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.version += 1


class ProgramTable:
    """An event sink for the Runtime; `attach(runtime)` subscribes it."""

    def __init__(self, predictor: ToolPausePredictor | None = None, clock=time.monotonic):
        self.predictor = predictor or ToolPausePredictor()
        self.clock = clock
        self.entries: dict[str, ProgramEntry] = _Entries()
        self._live: dict[str, _Live] = {}
        self._runtime = None
        self.step_seconds = 1.0                  # running mean of an agent turn's duration
        self._llm_started: dict[tuple[str, str], float] = {}   # (program, request id) -> start
        self._open_tools: dict[str, list] = {}   # program -> (tool, since) of calls in flight (lanes overlap)

    def attach(self, runtime) -> "ProgramTable":
        self._runtime = runtime
        runtime.sinks.append(self)
        return self

    # ------------------------------------------------------------------ events
    def __call__(self, event) -> None:
        handler = getattr(self, f"_on_{event.event}", None)
        if handler is not None:
            handler(event.program, event.data)

    def _on_program_start(self, pid: str, data: dict) -> None:
        program = self._runtime.programs.get(pid) if self._runtime is not None else None
        if program is None:
            return
        self._live[pid] = _Live(program.wf, program=program)
        for tool in program.wf.tools.values():
            if tool.expected_duration and self.predictor.hint(tool.name) is None:
                self.predictor.set_hint(tool.name, tool.expected_duration)
        self.entries[pid] = ProgramEntry(pid, program.submitted, {}, 0.0)
        self._refresh(pid, [program.wf.entry])

    def _on_program_end(self, pid: str, data: dict) -> None:
        self._live.pop(pid, None)
        self._open_tools.pop(pid, None)
        for key in [k for k in self._llm_started if k[0] == pid]:   # turns cut off by a cancel
            del self._llm_started[key]
        entry = self.entries.get(pid)
        if entry is not None:
            self.entries[pid] = ProgramEntry(pid, entry.arrival, {}, 0.0, finished=True)

    def _on_step_start(self, pid: str, data: dict) -> None:
        self._move(pid, data["step"], +1)

    def _on_step_end(self, pid: str, data: dict) -> None:
        self._move(pid, data["step"], -1)

    def _move(self, pid: str, step: str, delta: int) -> None:
        live = self._live.get(pid)
        if live is None:
            return
        live.frontier[step] += delta
        if live.frontier[step] <= 0:
            del live.frontier[step]
            if not live.frontier:                # between steps: the next one is where it goes
                self._refresh(pid, [live.workflow.next_step(step)] if step not in live.workflow.branches
                              and step not in live.workflow.fan_outs else [step])
                return
        self._refresh(pid, list(live.frontier.elements()))

    def _on_tool_start(self, pid: str, data: dict) -> None:
        self._open_tools.setdefault(pid, []).append((data["tool"], self.clock()))
        self._paused(pid)

    def _on_tool_end(self, pid: str, data: dict) -> None:
        tool = data["tool"]
        if data.get("error") is None:
            self.predictor.observe(tool, data["duration"])
        calls = self._open_tools.get(pid, [])
        for i, (name, _) in enumerate(calls):
            if name == tool:
                del calls[i]
                break
        self._paused(pid)

    def _paused(self, pid: str) -> None:
        """Paused while any call is in flight: on the oldest one (the longest wait so far)."""
        calls = self._open_tools.get(pid)
        tool, since = calls[0] if calls else (None, None)
        self._update(pid, paused_tool=tool, paused_since=since)

    def _on_llm_start(self, pid: str, data: dict) -> None:
        self._llm_started[pid, data["request_id"]] = self.clock()
        if not self._open_tools.get(pid):
            self._update(pid, pin_until=None)    # the program is back: its blocks are in use again

    def _on_llm_end(self, pid: str, data: dict) -> None:
        started = self._llm_started.pop((pid, data["request_id"]), None)
        if started is not None:
            self.step_seconds = 0.9 * self.step_seconds + 0.1 * (self.clock() - started)
        self._update(pid, context_tokens=data["tokens_in"] + data["tokens_out"])

    # ------------------------------------------------------------------ entries
    def _refresh(self, pid: str, frontier: list[str]) -> None:
        live = self._live.get(pid)
        if live is None:
            return
        analysis = live.workflow.analysis
        frontier = [n for n in frontier if n in live.workflow.steps]
        loops = dict(getattr(live.program, "loop_counts", None) or {})
        self._update(pid, steps_to_execution=analysis.steps_to_execution(frontier, loops),
                     remaining_turns=analysis.expected_remaining_turns(frontier, loop_counts=loops))

    def _update(self, pid: str, **changes: Any) -> None:
        entry = self.entries.get(pid)
        if entry is None or entry.finished:
            return
        values = {name: getattr(entry, name) for name in ProgramEntry.__slots__}
        values.update(changes)
        self.entries[pid] = ProgramEntry(**values)

    def pin(self, pid: str, until: float) -> None:
        self._update(pid, pin_until=until)

    @property
    def version(self) -> int:
        return self.entries.version

    # ------------------------------------------------------------------ queries
    def distance(self, pid: str, agent: str) -> float:
        """Steps until `agent` of program `pid` runs again (inf: finished, unknown or never)."""
        entry = self.entries.get(pid)
        if entry is None or entry.finished:
            return INF
        return entry.steps_to_execution.get(agent, INF)

    def eta(self, pid: str, agent: str, now: float) -> float:
        """Seconds until `agent` of `pid` next reads its blocks: the rest of a tool pause (as the
        predictor expects it) plus one turn's time per step still to go."""
        entry = self.entries.get(pid)
        steps = self.distance(pid, agent)
        if steps == INF:
            return INF
        wait = 0.0
        if entry.paused_tool is not None:
            wait = self.predictor.expected_remaining(entry.paused_tool, now - entry.paused_since)
        return wait + max(steps - 1, 0) * self.step_seconds
