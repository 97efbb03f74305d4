"""The parts of a workflow: agents, and the three kinds of step (an agent turn, a tool call, a
Python function)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from agentrt.engine.params import SamplingParams
from agentrt.tools import Tool, tool

END = "__end__"
"""Where a program stops: a branch returns END, or a step has no outgoing edge."""

Template = Union[str, Callable[[Any], str]]     # "{field} text" over the state, or fn(scope) -> str


def as_tool(obj: Tool | Callable) -> Tool:
    return obj if isinstance(obj, Tool) else tool(obj)


@dataclass(slots=True, eq=False)
class Agent:
    """An LLM persona: its system prompt, how it samples, and the tools it may call itself.

    Its conversation within a program is append-only: each turn adds a user message and the
    reply, so the next turn's prompt extends the previous one and reuses its KV cache.
    `max_turns` bounds the generations of one step when the agent calls tools (model-driven).
    """
    name: str
    system: str = ""
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=128))
    tools: Sequence[Tool] = ()
    max_turns: int = 4
    expected_turns: float | None = None      # a hint for the scheduler; default 1, or 2 with tools

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError("an agent needs a non-empty name")
        if isinstance(self.params, Mapping):
            self.params = SamplingParams(**self.params)
        self.tools = tuple(as_tool(t) for t in self.tools)
        if self.max_turns < 1:
            raise ValueError(f"agent {self.name!r}: max_turns must be at least 1")

    @property
    def turns_estimate(self) -> float:
        if self.expected_turns is not None:
            return float(self.expected_turns)
        return min(2.0, float(self.max_turns)) if self.tools else 1.0


@dataclass(slots=True, eq=False)
class Step:
    name: str
    output: str | None = None          # the state field (or branch-local name) the result goes to

    @property
    def kind(self) -> str:
        raise NotImplementedError


@dataclass(slots=True, eq=False)
class LLMStep(Step):
    """One agent turn: render `prompt`, append it to the agent's conversation, generate.

    With tools the agent may answer with tool calls first (up to its max_turns generations);
    the final answer is the step's result. `parse` turns the text into the output's type.
    """
    agent: str = ""
    prompt: Template = ""
    parse: Callable[[str], Any] | None = None
    params: SamplingParams | Callable[[Any], SamplingParams] | None = None   # overrides the agent's;
                                               # a function of the state chooses them per turn

    @property
    def kind(self) -> str:
        return "llm"


@dataclass(slots=True, eq=False)
class ToolStep(Step):
    """A tool call the graph places (graph-driven): arguments are templates, callables of the
    scope, or literal values."""
    tool: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    on_error: str | None = None                # "observe" | "fail"; None = the workflow's setting

    @property
    def kind(self) -> str:
        return "tool"


@dataclass(slots=True, eq=False)
class FunctionStep(Step):
    """A pure-Python step: fn(state) returns a dict of updates, a state, or None."""
    fn: Callable[..., Any] | None = None

    @property
    def kind(self) -> str:
        return "python"


@dataclass(slots=True, frozen=True)
class Branch:
    """After `source`, `router(state)` names the next step (or END) among `targets`.

    An edge back to an earlier step is a loop; it needs `max_loops`. Once a back edge has been
    taken max_loops times the program goes to `exit` instead.
    """
    source: str
    router: Callable[[Any], str]
    targets: tuple[str, ...]
    max_loops: int | None = None
    exit: str | None = None
    weights: Mapping[str, float] | None = None     # how likely each target is (analysis only)


@dataclass(slots=True, frozen=True)
class FanOut:
    """After `source`, run the steps from `to` once per item of the list field `over`, all at
    once; each branch sees its item as `{item}`. The branches end at `join`, where what they
    wrote to reducer fields is merged in item order."""
    source: str
    over: str
    to: str
    join: str
    item: str = "item"
    expected_items: int = 3                        # for analysis before the list is known
