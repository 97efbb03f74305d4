"""Helpers for the server tests: a scripted runner (the model "says" a chosen text, so tool-call
parsing can be checked on the byte tokenizer) and waiting for the engine to go idle."""
from __future__ import annotations

import time

from agentrt.engine.backend import StepOutput

TINY_EOS = 258


class ScriptRunner:
    """Every request's output is `script` (bytes: the byte tokenizer's ids), then end-of-sequence;
    each step sleeps `step_seconds` (so streams last long enough to disconnect from)."""

    def __init__(self, layout, *, step_seconds: float = 0.0):
        self.layout, self.step_seconds = layout, step_seconds
        self.block_bytes = 1024
        self.script = b"Hello there."
        self.rules: list[tuple[bytes, bytes]] = []     # (text in the prompt, script): the first match wins

    def run(self, batch) -> StepOutput:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        rows, tokens = [], []
        for i, (req, n) in enumerate(zip(batch.requests, batch.num_new_tokens)):
            if req.num_computed_tokens + n == req.num_tokens:
                pos = len(req.output_token_ids)
                rows.append(i)
                script = self._script_for(req)
                tokens.append(script[pos] if pos < len(script) else TINY_EOS)
        return StepOutput(tokens, None, rows)

    def _script_for(self, req) -> bytes:
        if self.rules:
            prompt = bytes(t for t in req.prompt_token_ids if t < 256)
            for marker, script in self.rules:
                if marker in prompt:
                    return script
        return self.script

    def apply_moves(self, moves) -> None:
        pass

    def prefetch_copy(self, block_ids, slots) -> None:
        pass

    def forget(self, request_id: str) -> None:
        pass


def wait_idle(engine, timeout: float = 10.0) -> None:
    """Wait until the async engine holds no request (then its pool may be read from this thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.engine.stats()
        if not engine.engine.has_unfinished() and stats["blocks_in_use"] == 0:
            time.sleep(0.05)                 # let a step in progress finish
            if not engine.engine.has_unfinished():
                return
        time.sleep(0.02)
    raise AssertionError(f"engine not idle after {timeout} s: {engine.engine.stats()}")


def assert_pool_clean(engine) -> None:
    wait_idle(engine)
    pool = engine.engine.pool
    pool.check_invariants()
    assert pool.num_in_use == 0, f"{pool.num_in_use} blocks still held"
    assert not engine.engine.scheduler.running and not engine.engine.scheduler.waiting
