"""Program-level admission: start a program only when the device tier can hold its KV beside
the programs already running, oldest first. Under overload, admitting everyone shares the
engine and the cache among all programs, so every program finishes late and contexts evict
each other; admitting what fits finishes programs in waves, each with its cache intact.

A program's footprint is the KV it keeps live at its peak: its largest agent context (prompt plus
output of one turn) times the most turns it had in flight at once (fan-out branches). Before any
program of a workflow has finished, the largest footprint seen so far among running ones stands in.

`max_programs` also caps how many programs run at once: on a compute-bound device, sharing every
step among all programs makes each step slow for everyone; a few programs at a time finish sooner
on average, as long as their turns still fill the batch. `cap` sets that number as programs come:
called with how many are present (running and waiting), it returns the cap (None: none), e.g.
agentrt's `StepCost.cap`, from the device's measured step costs. `capacity_tokens=None` admits by
those caps alone.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from agentrt.sched.events import LLMCallEnded, LLMCallStarted


class AdmissionGate:
    def __init__(self, capacity_tokens: int | None, *, headroom: float = 1.0, first_guess: float = 0.2,
                 max_programs: int | None = None, cap: Callable[[int], int | None] | None = None):
        if max_programs is not None and max_programs < 1:
            raise ValueError(f"max_programs must be >= 1 (None: no cap), got {max_programs}")
        self.capacity = None if capacity_tokens is None else capacity_tokens * headroom
        self.max_programs, self.cap = max_programs, cap
        self.first_guess = (capacity_tokens or 0) * first_guess   # a workflow never seen: a fifth of the tier
        self.active: dict[str, str] = {}                  # program -> workflow
        self.footprint: dict[str, float] = defaultdict(float)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._widest: dict[str, int] = defaultdict(int)      # most turns in flight at once
        self._longest: dict[str, int] = defaultdict(int)     # largest context of one turn
        self.finished: dict[str, list[float]] = defaultdict(list)   # workflow -> footprints of ended programs
        self._changed: asyncio.Event | None = None
        self.waited = 0                                   # programs that had to wait (for reports)
        self.waiting = 0                                  # programs waiting now

    def estimate(self, workflow: str) -> float:
        done = self.finished.get(workflow)
        if done:
            return sum(done) / len(done)
        running = [self.footprint[p] for p, w in self.active.items() if w == workflow]
        return max([self.first_guess, *running])

    def _fits(self, workflow: str) -> bool:
        if not self.active:
            return True                                   # always let one program run
        if self.max_programs is not None and len(self.active) >= self.max_programs:
            return False
        if self.cap is not None:
            limit = self.cap(len(self.active) + self.waiting)
            if limit is not None and len(self.active) >= limit:
                return False
        if self.capacity is None:
            return True
        held = sum(max(self.footprint[p], self.estimate(w)) for p, w in self.active.items())
        return held + self.estimate(workflow) <= self.capacity

    async def acquire(self, program_id: str, workflow: str) -> None:
        """Wait (FCFS: earlier callers are woken first and re-check first) until the program fits."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self.waiting += 1                                 # present from now: the cap counts it
        try:
            if not self._fits(workflow):
                self.waited += 1
                while not self._fits(workflow):
                    self._changed.clear()
                    await self._changed.wait()
        finally:
            self.waiting -= 1
        self.active[program_id] = workflow

    def release(self, program_id: str) -> None:
        workflow = self.active.pop(program_id, None)
        if workflow is not None:
            self.finished[workflow].append(self.footprint.pop(program_id, 0.0))
        for table in (self._in_flight, self._widest, self._longest):
            table.pop(program_id, None)
        if self._changed is not None:
            self._changed.set()

    def publish(self, event) -> None:
        """Track each active program's widest fan-out and longest context."""
        kind = type(event)
        if kind is not LLMCallStarted and kind is not LLMCallEnded:
            return
        pid = event.program_id
        if pid not in self.active:
            return
        if kind is LLMCallStarted:
            self._in_flight[pid] += 1
            self._widest[pid] = max(self._widest[pid], self._in_flight[pid])
        else:
            self._in_flight[pid] -= 1
            self._longest[pid] = max(self._longest[pid], event.tokens_in + event.tokens_out)
            self.footprint[pid] = float(self._longest[pid] * self._widest[pid])
