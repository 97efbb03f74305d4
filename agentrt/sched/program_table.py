"""The program table: what the program events say about every program, in the form the KV
policies read it (from the engine thread, without locks: each program's entry is replaced
whole, never edited in place).

A finished program's entry stays (with `finished` set: policies rank its blocks as they would an
unknown program's) for the `keep_finished` most recently ended programs, so a front, a benchmark or
a test can still read how a program ended; older ones are dropped, so a long-running server's
table holds its live programs plus that window."""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agentrt.clock import MONOTONIC, Clock
from agentrt.sched.events import (LLMCallEnded, LLMCallStarted, LoopCounts, ProgramEnded, ProgramEvent,
                                  ProgramGraph, ProgramStarted, StepEnded, StepStarted, ToolEnded, ToolProgress,
                                  ToolStarted, remaining_seconds)
from agentrt.sched.predictor import ToolPausePredictor

INF = math.inf
KEEP_FINISHED = 10_000       # finished programs' entries kept (the most recently ended)


@dataclass(slots=True, frozen=True)
class ProgramEntry:
    """One program as the policies see it."""
    program_id: str
    arrival: float
    steps_to_execution: dict[str, int]       # agent -> steps until its next turn (absent: never again)
    remaining_turns: float
    paused_tool: str | None = None           # the tool the program waits on, if any
    paused_since: float | None = None
    paused_until: float | None = None        # when the tool itself said it would be done (ToolProgress)
    pin_until: float | None = None           # a TTL pin on its blocks, when a policy set one
    context_tokens: int = 0                  # prompt + output tokens of its latest agent turn
    finished: bool = False


@dataclass(slots=True)
class _Live:
    graph: ProgramGraph | None
    frontier: Counter = field(default_factory=Counter)
    loop_counts: LoopCounts = field(default_factory=dict)   # as of the latest step event


class _Entries(dict):
    """Program entries with a version bumped on every write (cached rankings check it)."""
    version = 0

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.version += 1


class ProgramTable:
    """Fed typed program events (`publish`) by the scheduler's front door."""

    def __init__(self, predictor: ToolPausePredictor | None = None, clock: Clock = MONOTONIC, *,
                 keep_finished: int = KEEP_FINISHED):
        if keep_finished < 0:
            raise ValueError("keep_finished must be >= 0")
        self.predictor = predictor or ToolPausePredictor()
        self.clock = clock
        self.keep_finished = keep_finished
        self.entries: dict[str, ProgramEntry] = _Entries()
        self._finished: OrderedDict[str, None] = OrderedDict()   # ended programs with an entry, oldest first
        self._live: dict[str, _Live] = {}
        self.step_seconds = 1.0                  # running mean of an agent turn's duration
        self._llm_started: dict[tuple[str, str], float] = {}   # (program, request id) -> start
        self._open_tools: dict[str, list] = {}   # program -> [tool, since, reported end] of calls in flight (lanes overlap)
        self._handlers = {ProgramStarted: self._started, ProgramEnded: self._ended, StepStarted: self._step_started,
                          StepEnded: self._step_ended, ToolStarted: self._tool_started, ToolEnded: self._tool_ended,
                          ToolProgress: self._tool_progress,
                          LLMCallStarted: self._llm_call_started, LLMCallEnded: self._llm_call_ended}

    # ------------------------------------------------------------------ events
    def publish(self, event: ProgramEvent) -> None:
        self._handlers[type(event)](event)

    def _started(self, ev: ProgramStarted) -> None:
        pid = ev.program_id
        self._finished.pop(pid, None)            # an id used again: a new program
        self._live[pid] = _Live(ev.graph)
        for tool, seconds in ev.tool_hints.items():
            if seconds and self.predictor.hint(tool) is None:
                self.predictor.set_hint(tool, seconds)
        self.entries[pid] = ProgramEntry(pid, ev.arrival, {}, 0.0)
        if ev.graph is not None:
            self._refresh(pid, [ev.graph.entry])

    def _ended(self, ev: ProgramEnded) -> None:
        pid = ev.program_id
        self._live.pop(pid, None)
        self._open_tools.pop(pid, None)
        for key in [k for k in self._llm_started if k[0] == pid]:   # turns cut off by a cancel
            del self._llm_started[key]
        entry = self.entries.get(pid)
        if entry is not None:
            self.entries[pid] = ProgramEntry(pid, entry.arrival, {}, 0.0, finished=True)
            self._finished.pop(pid, None)
            self._finished[pid] = None
            while len(self._finished) > self.keep_finished:
                old, _ = self._finished.popitem(last=False)
                del self.entries[old]

    def _step_started(self, ev: StepStarted) -> None:
        self._move(ev.program_id, ev.step, +1, ev.loop_counts)

    def _step_ended(self, ev: StepEnded) -> None:
        self._move(ev.program_id, ev.step, -1, ev.loop_counts)

    def _move(self, pid: str, step: str, delta: int, loop_counts: LoopCounts) -> None:
        live = self._live.get(pid)
        if live is None or live.graph is None:
            return
        live.loop_counts = loop_counts
        live.frontier[step] += delta
        if live.frontier[step] <= 0:
            del live.frontier[step]
            if not live.frontier:                # between steps: the next one is where it goes
                self._refresh(pid, live.graph.frontier_after(step))
                return
        self._refresh(pid, list(live.frontier.elements()))

    def _tool_started(self, ev: ToolStarted) -> None:
        entry = self.entries.get(ev.program_id)
        if entry is None or entry.finished:      # nothing would read it (and nothing would clear it)
            return
        self._open_tools.setdefault(ev.program_id, []).append([ev.tool, self.clock.now(), None])
        self._paused(ev.program_id)

    def _tool_progress(self, ev: ToolProgress) -> None:
        """The tool's own estimate replaces the predictor's for the rest of this pause."""
        now = self.clock.now()
        for call in self._open_tools.get(ev.program_id, []):
            if call[0] == ev.tool:
                left = remaining_seconds(ev, now - call[1])
                if left is not None:
                    call[2] = now + left
                    self._paused(ev.program_id)
                return

    def _tool_ended(self, ev: ToolEnded) -> None:
        if ev.error is None:
            self.predictor.observe(ev.tool, ev.duration)
        calls = self._open_tools.get(ev.program_id, [])
        for i, (name, _, _) in enumerate(calls):
            if name == ev.tool:
                del calls[i]
                break
        self._paused(ev.program_id)

    def _paused(self, pid: str) -> None:
        """Paused while any call is in flight: on the oldest one (the longest wait so far)."""
        calls = self._open_tools.get(pid)
        tool, since, until = calls[0] if calls else (None, None, None)
        self._update(pid, paused_tool=tool, paused_since=since, paused_until=until)

    def _llm_call_started(self, ev: LLMCallStarted) -> None:
        pid = ev.program_id
        self._llm_started[pid, ev.request_id] = self.clock.now()
        if not self._open_tools.get(pid):
            self._update(pid, pin_until=None)    # the program is back: its blocks are in use again

    def _llm_call_ended(self, ev: LLMCallEnded) -> None:
        started = self._llm_started.pop((ev.program_id, ev.request_id), None)
        if started is not None:
            self.step_seconds = 0.9 * self.step_seconds + 0.1 * (self.clock.now() - started)
        self._update(ev.program_id, context_tokens=ev.tokens_in + ev.tokens_out)

    # ------------------------------------------------------------------ entries
    def _refresh(self, pid: str, frontier: list[str]) -> None:
        graph = self._live[pid].graph
        loops = self._live[pid].loop_counts
        frontier = [n for n in frontier if graph.has_step(n)]
        self._update(pid, steps_to_execution=graph.steps_to_execution(frontier, loops),
                     remaining_turns=graph.expected_remaining_turns(frontier, loop_counts=loops))

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

    def sizes(self) -> dict[str, int]:
        """How much the table holds: entries (live and finished), live programs, programs with tool
        calls in flight, LLM calls in flight (a long-running front can watch these stay bounded)."""
        return {"entries": len(self.entries), "finished": len(self._finished), "live": len(self._live),
                "open_tools": sum(1 for calls in self._open_tools.values() if calls),
                "llm_calls": len(self._llm_started)}

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
        if entry.paused_until is not None:
            wait = max(entry.paused_until - now, 0.0)
        elif entry.paused_tool is not None:
            wait = self.predictor.expected_remaining(entry.paused_tool, now - entry.paused_since)
        return wait + max(steps - 1, 0) * self.step_seconds
