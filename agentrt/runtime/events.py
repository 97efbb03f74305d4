"""What programs report while they run: structured events, an optional JSONL trace, and the
per-program result the run ends with."""
from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from pydantic import BaseModel

EVENT_KINDS = (
    "program_start", "program_end",      # status, error on the end
    "step_start", "step_end",            # step, kind, agent / tool
    "llm_start", "llm_end",              # request_id, tokens_in, tokens_out, cached_tokens, turn
    "tool_start", "tool_end",            # tool, expected_duration, duration, attempts, error
    "tool_retry",                        # tool, attempt, error
    "tool_replayed",                     # a durable run's journal held the call's result: not made again
    "fan_out",                           # step, over, items
    "loop_limit",                        # a bounded loop took its exit
    "warning",                           # something the user should know, e.g. max_turns reached
    "error",                             # what failed a program
)


@dataclass(slots=True)
class Event:
    t: float                       # seconds since the runtime started
    program: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"t": round(self.t, 6), "program": self.program, "event": self.event,
                           **self.data}, default=_jsonable, ensure_ascii=False)


EventSink = Callable[[Event], None]


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return repr(value)


class TraceWriter:
    """An EventSink appending one JSON object per line to a file (flushed per program end)."""

    def __init__(self, path: str | Path | IO[str]):
        self._own = not hasattr(path, "write")
        self._file = open(path, "w", encoding="utf-8") if self._own else path
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._file.write(event.to_json() + "\n")
            if event.event == "program_end":
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.flush()
            if self._own:
                self._file.close()


class ProgramResult(NamedTuple):
    """How one program ended."""
    program_id: str
    workflow: str
    status: str                    # "done" | "failed" | "cancelled"
    state: BaseModel               # the final (or last good) state, a model instance
    output: Any                    # the workflow's output field, when it names one
    error: str | None
    jct: float                     # job completion time, seconds from submission to end
    steps: int
    llm_calls: int
    tool_calls: int
    tokens_in: int                 # prompt tokens over all LLM calls
    tokens_out: int
    cached_tokens: int             # prompt tokens served from the prefix cache

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.tokens_in if self.tokens_in else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        d["state"] = self.state.model_dump(mode="json")
        d["output"] = _jsonable(self.output) if isinstance(self.output, BaseModel) else self.output
        d["hit_rate"] = round(self.hit_rate, 4)
        d["jct"] = round(self.jct, 4)
        return d


def summarize(results: list[ProgramResult], wall: float) -> dict[str, Any]:
    """Totals over a run's programs."""
    jcts = sorted(r.jct for r in results)
    tokens_in = sum(r.tokens_in for r in results)
    tokens_out = sum(r.tokens_out for r in results)
    return {
        "programs": len(results),
        "done": sum(r.status == "done" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "cancelled": sum(r.status == "cancelled" for r in results),
        "wall_s": round(wall, 3),
        "mean_jct_s": round(sum(jcts) / len(jcts), 3) if jcts else 0.0,
        "p50_jct_s": round(quantile(jcts, 0.5), 3),
        "p95_jct_s": round(quantile(jcts, 0.95), 3),
        "llm_calls": sum(r.llm_calls for r in results),
        "tool_calls": sum(r.tool_calls for r in results),
        "tokens_in": tokens_in, "tokens_out": tokens_out,
        "prefix_hit_rate": round(sum(r.cached_tokens for r in results) / tokens_in, 4) if tokens_in else 0.0,
        "output_tokens_per_s": round(tokens_out / wall, 2) if wall > 0 else 0.0,
    }


def quantile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated quantile (0 <= q <= 1); 0.0 for no values."""
    xs = sorted(values)
    if not xs:
        return 0.0
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
