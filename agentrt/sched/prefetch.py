"""Prefetch the next agent's prefix: when a program pauses on a tool, the agents that read the
tool's result will resend their conversation; its blocks are brought back from the host tier
while the tool runs. kvflow asks at once (the agent is next in line); agentrt asks shortly
before the tool is predicted to return, when other programs' traffic has had its chance to push
those blocks out. lru and continuum load on demand.

It needs what the front handed over at `ProgramStarted`: the program's graph (who resumes after
the tool) and a prompt source (what they will send)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from agentrt.sched.events import ProgramEnded, ProgramStarted, ToolProgress, ToolStarted, remaining_seconds

LEAD_SECONDS = 0.05          # how long before the predicted return agentrt starts the copy

Prefetch = Callable[[list[int]], None]      # the engine's: bring a prompt's host-tier prefix back, evicting


class NextAgentPrefetcher:
    """Consumes ToolStarted (and the program's start and end). Prefetches evict through the
    policy, so they displace only blocks it ranks below the waiting agent's. In timed mode a
    ToolProgress (the tool's own ETA, or its fraction done) moves a scheduled prefetch to
    LEAD_SECONDS before the reported end: a tool that says "almost done" is prefetched for now."""

    def __init__(self, prefetch: Prefetch, *, timed: bool = False, predictor=None):
        self.prefetch, self.timed, self.predictor = prefetch, timed, predictor
        self._programs: dict[str, ProgramStarted] = {}
        self.requested = 0                     # prefetch requests made (for reports and tests)
        self._timers: dict[tuple[str, str | None], tuple[asyncio.TimerHandle, float]] = {}   # -> (timer, tool start)

    def publish(self, event) -> None:
        kind = type(event)
        if kind is ProgramStarted:
            if event.graph is not None and event.prompts is not None:
                self._programs[event.program_id] = event
        elif kind is ProgramEnded:
            self._programs.pop(event.program_id, None)
            for key in [k for k in self._timers if k[0] == event.program_id]:
                self._timers.pop(key)[0].cancel()
        elif kind is ToolStarted and event.program_id in self._programs:
            if not self.timed or self.predictor is None:
                return self._prefetch(event.program_id, event.step)
            delay = self.predictor.quantile(event.tool, 0.5) - LEAD_SECONDS
            self._schedule(event.program_id, event.step, max(delay, 0.0), event.at)
        elif kind is ToolProgress and self.timed and event.program_id in self._programs:
            timer = self._timers.get((event.program_id, event.step))
            if timer is None:                        # already prefetched (or never scheduled)
                return
            handle, started = timer
            loop = asyncio.get_running_loop()
            left = remaining_seconds(event, event.at - started)
            if left is None:
                return
            delay = max(left - LEAD_SECONDS, 0.0)
            if loop.time() + delay < handle.when() - 0.005:      # sooner than planned: move it up
                handle.cancel()
                self._schedule(event.program_id, event.step, delay, started)

    def _schedule(self, program_id: str, step: str | None, delay: float, started: float) -> None:
        key = (program_id, step)
        old = self._timers.pop(key, None)
        if old is not None:
            old[0].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, program_id, step)
        self._timers[key] = (handle, started)

    def _fire(self, program_id: str, step: str | None) -> None:
        self._timers.pop((program_id, step), None)
        self._prefetch(program_id, step)

    def _prefetch(self, program_id: str, step: str | None) -> None:
        started = self._programs.get(program_id)
        if started is None or step is None:      # ended meanwhile, or a call outside any step
            return
        graph = started.graph
        agents = set(graph.next_agents(step))
        caller = graph.agent_of(step)
        if caller:                               # a model-driven call: the calling agent resumes
            agents.add(caller)
        for ids in started.prompts.prompts_of(agents):
            self.prefetch(ids)
            self.requested += 1
