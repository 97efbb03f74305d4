"""Every engine step of a run, as a row of its shape and the runner's seconds: what the fidelity
check compares with a step profile, step by step, to find where the simulator's model is wrong.

A row (`STEP_FIELDS`): the profile's five shape terms (`agentrt.engine.sim.batch_shape`), then what
the torch CPU path pads or shares that those terms do not see:
* `ctx_rows`, `ctx_padded`: prefill chunks that read earlier context run as one padded batch: its
  rows, and its rows x the longest chunk x the most keys, in query-key pairs.
* `decode_shared`: leading KV tokens every decode of the step shares (read once, the cascade path),
  0 when there is no cascade.

>>> recorder = StepRecorder(block_size=16)
>>> engine.add_observer(recorder)        # recorder.rows after the run
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from agentrt.engine.observe import EngineObserver
from agentrt.engine.sim import StepProfile, batch_shape, padding_shape

STEP_FIELDS = ("prefill", "decode", "prefill_ctx", "decode_ctx", "decode_longest", "ctx_rows", "ctx_padded",
               "decode_shared", "seconds")


class StepRecorder(EngineObserver):
    """An engine observer keeping one `STEP_FIELDS` row per computed step."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.rows: list[tuple] = []

    def on_computed(self, batch, seconds: float) -> None:
        self.rows.append((*batch_shape(batch), *padding_shape(batch, self.block_size), round(seconds, 6)))


def step_logs(runs: dict[str, list]) -> dict[str, Any]:
    """A report's step rows: {"step_fields": ..., "step_logs": {policy: [rows of each run]}}, or {}
    when no run kept any (simulated runs do not)."""
    if not any(r.step_log for records in runs.values() for r in records):
        return {}
    return {"step_fields": list(STEP_FIELDS),
            "step_logs": {p: [r.step_log for r in records] for p, records in runs.items()}}


def step_kind(row: Sequence) -> str:
    prefill, decode = row[0], row[1]
    if prefill and decode:
        return "mixed"
    return "prefill" if prefill else "decode"


def compare_steps(rows: Sequence[Sequence], profile: StepProfile) -> list[dict[str, Any]]:
    """Per kind of step (decode only, prefill only, mixed): how many, the runner's measured seconds
    against what the profile predicts for the same shapes, and the share of measured time."""
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        predicted = profile.step_seconds(*row[:5], *row[6:8])
        groups[step_kind(row)].append((row[-1], predicted))
    total = sum(r[-1] for r in rows) or 1.0
    out = []
    for kind in ("decode", "prefill", "mixed"):
        pairs = groups.get(kind)
        if not pairs:
            continue
        real = sum(r for r, _ in pairs)
        sim = sum(p for _, p in pairs)
        out.append({"kind": kind, "steps": len(pairs), "real_ms": round(1000 * real / len(pairs), 2),
                    "sim_ms": round(1000 * sim / len(pairs), 2), "error": round((sim - real) / real, 4),
                    "median_step_error": round(statistics.median((p - r) / r for r, p in pairs), 4),
                    "share_of_time": round(real / total, 4)})
    return out
