"""A SWE-agent-shaped workload: coding-agent episodes with long, growing contexts and tool pauses.

Each program is one episode of a mini-swe-agent-style loop: a system prompt every program shares,
the issue to fix (its own text), then 20-60 turns in which the agent writes an assistant turn
(tens to hundreds of tokens) that calls one tool, pauses for the call, and reads its result
(hundreds to thousands of tokens) as the next user message. The context only grows.

Where the figures come from:
* tool calls and their wall latencies: TraceLab's real Claude/Codex coding sessions
  (`../shared/workloads/tracelab_claude_session_rounds.jsonl`): every call is drawn from that
  trace (its tool name and latency) and jittered by a log-normal factor (sigma 0.35), so most
  calls take under a second while most tool *time* is in calls of seconds (web searches, long
  writes) to a minute;
* token lengths: log-normal around a tool result of 600 tokens and an assistant turn of 120 (the
  trace's appended tokens per round have a median of ~1.3k and its outputs ~260; SWE-agent
  observations are shorter than Claude Code's), clipped to [60, 4000] and [16, 600] before
  `scale`; a 1,500-token shared system prompt and a 400-token issue;
* arrivals: Poisson at `rate` programs/s (0: all at once).

`scale` multiplies every token length (0.125 fits a small CPU model); `time_scale` divides every
tool latency. Everything is a pure function of the seed.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from agentrt.bench.traces import workloads_dir

TRACE_FILE = "tracelab_claude_session_rounds.jsonl"
# (tool, seconds) per call, used only when the trace folder is absent (the trace's own calls)
BUILTIN_CALLS = (("Bash", 0.86), ("WebSearch", 19.29), ("WebSearch", 12.69), ("Write", 21.47), ("Bash", 0.145),
                 ("WebSearch", 16.11), ("WebFetch", 2.52), ("Write", 0.13), ("Bash", 0.187), ("exec_command", 0.067),
                 ("exec_command", 0.079), ("exec_command", 1.176), ("write_stdin", 5.0), ("write_stdin", 0.008),
                 ("exec_command", 0.091), ("exec_command", 0.176), ("exec_command", 0.057),
                 ("exec_command", 0.062), ("exec_command", 0.058))
WORDS = ("repo module patch diff test assert import class method return value error trace line file path "
         "branch commit config parser token buffer index cache query schema field record stream socket "
         "thread lock queue retry timeout handler request response status header payload encode decode").split()


@dataclass(frozen=True, slots=True)
class SweTurn:
    output_tokens: int        # the assistant turn
    tool: str                 # the tool it calls
    tool_seconds: float       # how long the call takes
    result_tokens: int        # what the call returns: the next user message


@dataclass(frozen=True, slots=True)
class SweProgram:
    program_id: str
    arrival_s: float
    task: str                           # the issue (the first user message)
    turns: tuple[SweTurn, ...]

    @property
    def context_tokens(self) -> int:
        """Roughly the final context, in tokens (words count as tokens)."""
        return len(self.task.split()) + sum(t.output_tokens + t.result_tokens for t in self.turns)


@dataclass(frozen=True, slots=True)
class SweShape:
    programs: int = 16
    rate: float = 0.0                   # Poisson programs/s; 0: all at once
    seed: int = 0
    scale: float = 1.0                  # token lengths
    time_scale: float = 1.0             # tool latencies are divided by this
    min_turns: int = 20
    max_turns: int = 60
    system_tokens: int = 1500
    task_tokens: int = 400
    result_median: int = 600
    output_median: int = 120
    calls: tuple[tuple[str, float], ...] = field(default=(), repr=False)   # empty: from the trace

    def __post_init__(self):
        if self.programs < 1 or self.scale <= 0 or self.time_scale <= 0 or self.rate < 0:
            raise ValueError("need programs >= 1, scale > 0, time_scale > 0 and rate >= 0")
        if not 1 <= self.min_turns <= self.max_turns:
            raise ValueError(f"turns: need 1 <= min ({self.min_turns}) <= max ({self.max_turns})")


def tool_calls() -> tuple[tuple[tuple[str, float], ...], str]:
    """Every tool call of the TraceLab round trace as (tool name, seconds), and where they came from."""
    folder = workloads_dir()
    path = folder / TRACE_FILE if folder is not None else None
    if path is None or not path.is_file():
        return BUILTIN_CALLS, f"{TRACE_FILE} not found (../shared/workloads): its {len(BUILTIN_CALLS)} calls built in"
    calls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for call in (json.loads(line).get("tools") or ()) if line.strip() else ():
            if call.get("tool_wall_latency_ms") is not None and call.get("tool_name"):
                calls.append((call["tool_name"], call["tool_wall_latency_ms"] / 1000.0))
    return tuple(calls), f"tool calls drawn from the {len(calls)} real calls of {TRACE_FILE}"


def _lognormal(rng: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, median * math.exp(rng.gauss(0.0, sigma))))


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=max(1, n)))


def system_prompt(shape: SweShape) -> str:
    """The shared system prompt (the same for every program of every seed)."""
    return ("You are a software engineer fixing an issue in a repository. You work in a shell: each reply "
            "runs one tool and you read its output. " + text(random.Random(1234), round(shape.system_tokens * shape.scale)))


def swe_programs(shape: SweShape) -> list[SweProgram]:
    """The episodes of a run, pure in `shape` (the seed included)."""
    calls = shape.calls or tool_calls()[0]
    rng = random.Random(shape.seed)
    s, t, programs = shape.scale, 0.0, []
    for i in range(shape.programs):
        turns = []
        for _ in range(rng.randint(shape.min_turns, shape.max_turns)):
            tool, seconds = rng.choice(calls)
            seconds = max(0.001, seconds * math.exp(rng.gauss(0.0, 0.35))) / shape.time_scale
            turns.append(SweTurn(max(4, round(_lognormal(rng, shape.output_median, 0.6, 16, 600) * s)), tool,
                                 round(seconds, 4), max(8, round(_lognormal(rng, shape.result_median, 0.8, 60, 4000) * s))))
        task = f"Issue {i}: " + text(rng, round(shape.task_tokens * s))
        programs.append(SweProgram(f"swe{i}", round(t, 4), task, tuple(turns)))
        if shape.rate > 0:
            t += rng.expovariate(shape.rate)
    return programs


def summary(programs: list[SweProgram]) -> dict[str, float]:
    """Figures a report prints about the episodes."""
    pauses = sorted(t.tool_seconds for p in programs for t in p.turns)
    total = sum(pauses)
    slow = sum(x for x in pauses if x >= 1.0)
    return {"programs": len(programs), "turns": sum(len(p.turns) for p in programs),
            "mean_context_tokens": sum(p.context_tokens for p in programs) / len(programs),
            "max_context_tokens": max(p.context_tokens for p in programs),
            "calls_under_1s": sum(x < 1.0 for x in pauses) / len(pauses),
            "tool_time_in_calls_over_1s": slow / total if total else 0.0,
            "max_tool_seconds": pauses[-1]}

