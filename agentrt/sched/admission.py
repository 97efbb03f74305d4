"""Program-level admission: start a program only when the device tier can hold its KV beside
the programs already running, oldest first. Under overload, admitting everyone shares the
engine and the cache among all programs, so every program finishes late and contexts evict
each other; admitting what fits finishes programs in waves, each with its cache intact.

A program's footprint is the KV it creates: the prompt tokens it computes (not served from the
cache) plus the tokens it generates, summed over its agent turns. Before any program of a
workflow has finished, the largest footprint seen so far among running ones stands in.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict


class AdmissionGate:
    def __init__(self, capacity_tokens: int, *, headroom: float = 0.9, first_guess: float = 0.25):
        self.capacity = capacity_tokens * headroom
        self.first_guess = capacity_tokens * first_guess   # a workflow never seen: a quarter of the tier
        self.active: dict[str, str] = {}                  # program -> workflow
        self.footprint: dict[str, float] = defaultdict(float)
        self.finished: dict[str, list[float]] = defaultdict(list)   # workflow -> footprints of ended programs
        self._changed: asyncio.Event | None = None
        self.waited = 0                                   # programs that had to wait (for reports)

    def estimate(self, workflow: str) -> float:
        done = self.finished.get(workflow)
        if done:
            return sum(done) / len(done)
        running = [self.footprint[p] for p, w in self.active.items() if w == workflow]
        return max([self.first_guess, *running])

    def _fits(self, workflow: str) -> bool:
        if not self.active:
            return True                                   # always let one program run
        held = sum(max(self.footprint[p], self.estimate(w)) for p, w in self.active.items())
        return held + self.estimate(workflow) <= self.capacity

    async def acquire(self, program_id: str, workflow: str) -> None:
        """Wait (FCFS: earlier callers are woken first and re-check first) until the program fits."""
        if self._changed is None:
            self._changed = asyncio.Event()
        if not self._fits(workflow):
            self.waited += 1
            while not self._fits(workflow):
                self._changed.clear()
                await self._changed.wait()
        self.active[program_id] = workflow

    def release(self, program_id: str) -> None:
        workflow = self.active.pop(program_id, None)
        if workflow is not None:
            self.finished[workflow].append(self.footprint.pop(program_id, 0.0))
        if self._changed is not None:
            self._changed.set()

    def __call__(self, event) -> None:
        """Event sink: grow a program's footprint as its turns end."""
        if event.event == "llm_end" and event.program in self.active:
            d = event.data
            self.footprint[event.program] += d["tokens_in"] - d["cached_tokens"] + d["tokens_out"]
