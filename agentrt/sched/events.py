"""The scheduler's front door: typed program events, and what a front may hand over with them.

Every front (the DSL runtime, trace replays, the HTTP server, framework adapters) tells the
scheduler what its programs do with these events and nothing else. A front that knows the
program's step graph passes a `ProgramGraph` with `ProgramStarted` (the DSL's compiled analysis
is one); a front that can rebuild an agent's prompt passes a `PromptSource` (for prefetch). Both
are optional: without them the policies know arrival, turns, pauses and their durations.

Times are on the scheduler's clock (seconds).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

LoopCounts = Mapping[tuple[str, str], int]       # (branch source, back-edge target) -> times taken


@runtime_checkable
class ProgramGraph(Protocol):
    """What the scheduler asks of a program's step graph at its frontier."""
    entry: str                                       # the first step

    def steps_to_execution(self, frontier: Collection[str], loop_counts: LoopCounts | None = None) -> dict[str, int]:
        """Agent -> steps until its next turn (absent: it never runs again)."""

    def expected_remaining_turns(self, frontier: Collection[str], state=None,
                                 loop_counts: LoopCounts | None = None) -> float: ...

    def next_agents(self, step: str, loop_counts: LoopCounts | None = None) -> tuple[str, ...]:
        """The agents of the nearest agent turns after `step` (who reads a tool's result)."""

    def frontier_after(self, step: str) -> list[str]:
        """Where the program stands once `step` ended and no other step runs."""

    def agent_of(self, step: str) -> str | None:
        """The agent whose turn `step` is (a model-driven tool call resumes it), if any."""

    def has_step(self, step: str) -> bool: ...


@runtime_checkable
class PromptSource(Protocol):
    def prompts_of(self, agents: Collection[str]) -> list[list[int]]:
        """Token ids of the prompts these agents would resend now (their conversations so far)."""


@dataclass(slots=True, frozen=True)
class ProgramStarted:
    program_id: str
    arrival: float                                   # when the program was submitted
    at: float
    graph: ProgramGraph | None = None
    prompts: PromptSource | None = None
    tool_hints: Mapping[str, float] = field(default_factory=dict)   # tool -> the DSL's expected seconds


@dataclass(slots=True, frozen=True)
class StepStarted:
    program_id: str
    step: str
    at: float
    loop_counts: LoopCounts = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class StepEnded:
    program_id: str
    step: str
    at: float
    loop_counts: LoopCounts = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class LLMCallStarted:
    program_id: str
    request_id: str
    agent: str | None
    step: str | None
    tokens_in: int
    at: float


@dataclass(slots=True, frozen=True)
class LLMCallEnded:
    program_id: str
    request_id: str
    agent: str | None
    step: str | None
    tokens_in: int
    tokens_out: int
    cached_tokens: int
    at: float


@dataclass(slots=True, frozen=True)
class ToolStarted:
    program_id: str
    tool: str
    step: str | None
    at: float
    expected_duration: float | None = None


@dataclass(slots=True, frozen=True)
class ToolEnded:
    program_id: str
    tool: str
    step: str | None
    at: float
    duration: float
    error: str | None = None


@dataclass(slots=True, frozen=True)
class ToolProgress:
    """A running tool's own report (a remote worker's progress message, `report_progress`): how
    far it is and/or how long it still needs. Either may be None (a bare heartbeat)."""
    program_id: str
    tool: str
    step: str | None
    at: float
    fraction: float | None = None                    # done so far, 0..1
    eta_seconds: float | None = None                 # seconds still needed, as the tool sees it


@dataclass(slots=True, frozen=True)
class ProgramEnded:
    program_id: str
    status: str                                      # done | failed | cancelled
    at: float


ProgramEvent = Union[ProgramStarted, StepStarted, StepEnded, LLMCallStarted, LLMCallEnded, ToolStarted,
                     ToolProgress, ToolEnded, ProgramEnded]


def remaining_seconds(event: ToolProgress, elapsed: float) -> float | None:
    """Seconds the tool still needs by its report: its ETA, else what its fraction done implies
    at the pace so far (None when it says neither)."""
    if event.eta_seconds is not None:
        return max(float(event.eta_seconds), 0.0)
    if event.fraction is not None and 0.0 < event.fraction <= 1.0:
        return max(elapsed, 0.0) * (1.0 - event.fraction) / event.fraction
    return None
