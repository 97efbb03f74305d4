"""How many programs agentrt runs at once: as many as the device's own step costs make worth it.

Sharing a step among k programs costs each of them the step's fixed part once (a) and every other
program's share (c a sequence). With n programs present, running k at a time finishes them in
about n/k waves, each taking a turn's steps at a + c*k seconds a step, so the mean JCT goes as
(n/k + 1)/2 * (a + c*k): least at k = sqrt(n*a/c). Where a step's fixed part dominates (a GPU: a
= 12.6 ms against c = 67 us for a 70B model), k exceeds n and everyone runs; where every sequence
costs a lot (a CPU reading long contexts: a ~ 0.1 s, c ~ 0.04 s), it runs a few programs at a time
and the rest start as they finish, which is what program FCFS wants and batching alone does not
give.

a and c are fitted online, from the steps the engine computes (an engine observer: `on_computed`),
by least squares over step seconds = a + b * prefill tokens + c * decode sequences with older
steps forgotten geometrically; until the fit has enough steps of varying shape, there is no cap.

>>> cost = StepCost()
>>> engine.add_observer(cost)            # or EnginePolicy(observer=cost)
>>> cost.cap(16)                         # None until fitted, then e.g. 7
"""
from __future__ import annotations

import math

import numpy as np

from agentrt.engine.observe import EngineObserver


class StepCost(EngineObserver):
    """Online fit of the engine's step time; `cap(n)`: how many of n present programs to run at once."""

    def __init__(self, *, decay: float = 0.995, min_steps: int = 32):
        self.decay, self.min_steps = decay, min_steps
        self.steps = 0
        self._sums = np.zeros((3, 4))                 # rows: x x^T | x y over (1, prefill tokens, decode seqs)
        self._row = np.zeros(4)
        self._outer = np.zeros((3, 4))

    def on_computed(self, batch, seconds: float) -> None:
        prefill = decode = 0
        for n in batch.num_new_tokens:
            if n == 1:
                decode += 1
            else:
                prefill += n
        x = self._row
        x[0], x[1], x[2], x[3] = 1.0, prefill, decode, seconds
        self._sums *= self.decay
        self._sums += np.outer(x[:3], x, out=self._outer)
        self.steps += 1

    def coefficients(self) -> tuple[float, float, float] | None:
        """(a, b, c) in seconds, or None while the fit is not determined (too few or too alike steps)."""
        if self.steps < self.min_steps:
            return None
        xtx, xty = self._sums[:, :3], self._sums[:, 3]
        scale = np.sqrt(np.diag(xtx)) + 1e-12        # columns to one scale: tokens and counts differ by 1000x
        normed = xtx / np.outer(scale, scale)
        if np.linalg.cond(normed) > 1e6:
            return None
        a, b, c = np.linalg.solve(normed, xty / scale) / scale
        return (float(a), float(b), float(c)) if a > 0 and c > 0 else None

    def cap(self, present: int) -> int | None:
        """sqrt(present * a / c), rounded up; None (no cap) before the fit or when it allows everyone."""
        fitted = self.coefficients()
        if fitted is None or present < 2:
            return None
        a, _, c = fitted
        k = math.ceil(math.sqrt(present * a / c))
        return k if k < present else None
