"""The no-contention floor of a simulated run: the least JCT each program could have had.

A program alone on the machine, with a cache that never loses anything, still pays for every
step it takes and every tool pause it waits on. On a step-time profile (agentrt.engine.sim) no
schedule can beat that: sharing a step with other programs only adds terms. So the mean of these per-program floors bounds every policy's mean JCT
from below, and `lru mean JCT / floor` bounds how much faster than lru any policy can be.

It holds for programs that are one growing conversation (each call's prompt extends the last
call's prompt and output, the swe_agent shape): only the tokens a call adds are computed, at least
one per call; the tool pauses are the workload's (as drawn for each program).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from agentrt.engine.sim import StepProfile


def call_floor_s(profile: StepProfile, context_before: int, new_tokens: int, out_tokens: int) -> float:
    """One LLM call alone: one prefill step for `new_tokens` after `context_before` cached ones
    (it samples the first output token), then a decode step per further output token."""
    prefill_read = new_tokens * context_before + new_tokens * (new_tokens + 1) // 2
    padded = new_tokens * (context_before + new_tokens) if context_before else 0   # a batch of one row (keys unrounded)
    seconds = profile.step_seconds(new_tokens, 0, prefill_read, context_padded=padded)
    steps = max(0, out_tokens - 1)
    context = context_before + new_tokens
    decode_read = steps * context + steps * (steps + 1) // 2
    return seconds + steps * profile.step_seconds(0, 1, 0) + profile.decode_context_s * decode_read


def program_floor_s(profile: StepProfile, calls: Sequence[tuple[int, int]], tool_seconds: Iterable[float]) -> float:
    """A conversation's floor: its calls as (prompt tokens, output tokens), in order, and its pauses."""
    total, held = 0.0, 0
    for tokens_in, tokens_out in calls:
        new = max(1, tokens_in - held)
        total += call_floor_s(profile, tokens_in - new, new, tokens_out)
        held = tokens_in + tokens_out
    return total + sum(tool_seconds)


def run_floor_s(profile: StepProfile, calls: dict[str, list[tuple[int, int]]], pauses: dict[str, list[float]]
                ) -> float | None:
    """Mean floor over a run's programs (None without calls): the probe's calls per program and
    the workload's own tool pauses per program (as drawn, not as the run stretched them)."""
    if not calls:
        return None
    floors = [program_floor_s(profile, c, pauses.get(pid, ())) for pid, c in calls.items()]
    return sum(floors) / len(floors)
