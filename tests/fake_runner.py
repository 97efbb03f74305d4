"""A Runner that computes nothing (for tests of the stack above the model): every sampling row
gets `token`, and every step advances a virtual clock by `step_seconds`."""
from __future__ import annotations

from agentrt.clock import VirtualClock
from agentrt.engine.backend import RunnerLayout, StepOutput


class EchoRunner:
    def __init__(self, layout: RunnerLayout, clock: VirtualClock, *, step_seconds: float = 0.01, token: int = 65):
        self.layout, self.clock, self.step_seconds, self.token = layout, clock, step_seconds, token
        self.block_bytes = 1024
        self.steps = 0

    def run(self, batch) -> StepOutput:
        self.steps += 1
        self.clock.advance(self.step_seconds)
        rows = [i for i, (req, n) in enumerate(zip(batch.requests, batch.num_new_tokens))
                if req.num_computed_tokens + n == req.num_tokens]
        return StepOutput([self.token] * len(rows), None, rows)

    def apply_moves(self, moves) -> None:
        pass

    def prefetch_copy(self, block_ids, slots) -> None:
        pass

    def forget(self, request_id: str) -> None:
        pass
