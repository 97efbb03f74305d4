"""The workflow builder: declare steps and how they connect; `compile()` checks and freezes it.

>>> wf = Workflow("qa", State, output="answer")
>>> wf.llm("answer", expert, "Question: {question}", output="answer")
>>> wf.llm("check", critic, "Is this right? {answer}\\nReply OK or REDO.", output="verdict")
>>> wf.edge("answer", "check")
>>> wf.branch("check", lambda s: "answer" if "REDO" in s.verdict else END,
...           to=["answer", END], max_loops=2)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from agentrt.engine.params import SamplingParams
from agentrt.graph.steps import (END, Agent, Branch, FanOut, FunctionStep, LLMStep, Step,
                                 Template, ToolStep, as_tool)
from agentrt.tools import Tool


class WorkflowError(ValueError):
    """A workflow that cannot run; the message names each problem and how to fix it."""

    def __init__(self, workflow: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"workflow {workflow!r} is invalid:\n{lines}")


class Workflow:
    """A multi-agent program over a typed state (a pydantic model)."""

    def __init__(self, name: str, state: type[BaseModel], *, agents: Iterable[Agent] = (),
                 tools: Iterable[Tool | Callable] = (), output: str | None = None,
                 on_tool_error: str = "observe", description: str = ""):
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise TypeError(f"workflow {name!r}: state must be a pydantic BaseModel class, got {state!r}")
        if on_tool_error not in ("observe", "fail"):
            raise ValueError("on_tool_error is 'observe' (the error becomes the result) or 'fail'")
        self.name, self.state, self.output = name, state, output
        self.on_tool_error, self.description = on_tool_error, description
        self.agents: dict[str, Agent] = {}
        self.tools: dict[str, Tool] = {}
        self.steps: dict[str, Step] = {}
        self.edges: dict[str, str] = {}
        self.branches: dict[str, Branch] = {}
        self.fan_outs: dict[str, FanOut] = {}
        self.entry: str | None = None
        self.problems: list[str] = []          # found while building, reported by compile()
        self._compiled = None
        for agent in agents:
            self.add_agent(agent)
        for t in tools:
            self.add_tool(t)

    # ------------------------------------------------------------------ agents and tools
    def add_agent(self, agent: Agent) -> Agent:
        known = self.agents.get(agent.name)
        if known is not None and known is not agent:
            raise ValueError(f"workflow {self.name!r} already has a different agent named {agent.name!r}")
        self.agents[agent.name] = agent
        self._compiled = None
        for t in agent.tools:
            self.add_tool(t)
        return agent

    def add_tool(self, t: Tool | Callable) -> Tool:
        t = as_tool(t)
        known = self.tools.get(t.name)
        if known is not None and known.fn is not t.fn:
            raise ValueError(f"workflow {self.name!r} already has a different tool named {t.name!r}")
        self.tools.setdefault(t.name, t)
        self._compiled = None
        return self.tools[t.name]

    # ------------------------------------------------------------------ steps
    def llm(self, name: str, agent: Agent | str, prompt: Template, *, output: str | None = None,
            parse: Callable[[str], Any] | None = None,
            params: SamplingParams | Mapping | Callable[[Any], SamplingParams] | None = None) -> "Workflow":
        """An agent turn: `prompt` (a template over the state) is the user message. `params`
        override the agent's, or are chosen per turn by a function of the state."""
        if isinstance(agent, Agent):
            agent = self.add_agent(agent).name
        if isinstance(params, Mapping):
            params = SamplingParams(**params)
        return self._add(LLMStep(name, output, agent=agent, prompt=prompt, parse=parse, params=params))

    def tool(self, name: str, tool: Tool | Callable | str, args: Mapping[str, Any] | None = None, *,
             output: str | None = None, on_error: str | None = None) -> "Workflow":
        """A tool call placed by the graph; `args` values are templates, fn(scope) or literals."""
        if on_error not in (None, "observe", "fail"):
            raise ValueError(f"step {name!r}: on_error is 'observe' or 'fail'")
        if not isinstance(tool, str):
            tool = self.add_tool(tool).name
        return self._add(ToolStep(name, output, tool=tool, args=dict(args or {}), on_error=on_error))

    def python(self, name: str, fn: Callable[..., Any]) -> "Workflow":
        """A Python step: fn(state) returns a dict of updates (or a new state, or None)."""
        if not callable(fn):
            raise TypeError(f"step {name!r}: fn must be callable, got {fn!r}")
        return self._add(FunctionStep(name, None, fn=fn))

    def _add(self, step: Step) -> "Workflow":
        if not isinstance(step.name, str) or not step.name or step.name == END:
            raise ValueError(f"invalid step name {step.name!r}")
        if step.name in self.steps:
            raise ValueError(f"workflow {self.name!r} already has a step named {step.name!r}")
        self.steps[step.name] = step
        self.entry = self.entry or step.name
        self._compiled = None
        return self

    # ------------------------------------------------------------------ edges
    def start(self, name: str) -> "Workflow":
        """The first step (by default the first one declared)."""
        self.entry = name
        self._compiled = None
        return self

    def edge(self, source: str, target: str) -> "Workflow":
        """After `source`, run `target` (END stops the program)."""
        self._claim(source, f"an edge to {target!r}")
        self.edges[source] = target
        return self

    def sequence(self, *names: str) -> "Workflow":
        """Edges a -> b -> c ..."""
        for a, b in zip(names, names[1:]):
            self.edge(a, b)
        return self

    def branch(self, source: str, router: Callable[[Any], str], to: Iterable[str], *,
               max_loops: int | None = None, exit: str | None = None,
               weights: Mapping[str, float] | None = None) -> "Workflow":
        """After `source`, go where `router(state)` says, one of `to` (or END)."""
        if not callable(router):
            raise TypeError(f"branch after {source!r}: router must be callable")
        if max_loops is not None and max_loops < 1:
            raise ValueError(f"branch after {source!r}: max_loops must be at least 1")
        self._claim(source, "a branch")
        self.branches[source] = Branch(source, router, tuple(to), max_loops, exit,
                                       dict(weights) if weights else None)
        return self

    def fan_out(self, source: str, over: str, to: str, join: str, *, item: str = "item",
                expected_items: int = 3) -> "Workflow":
        """After `source`, run the steps from `to` once per element of the list field `over`,
        concurrently; the branches meet at `join`."""
        self._claim(source, "a fan-out")
        self.fan_outs[source] = FanOut(source, over, to, join, item, expected_items)
        return self

    def _claim(self, source: str, what: str) -> None:
        for kind, table in (("an edge", self.edges), ("a branch", self.branches),
                            ("a fan-out", self.fan_outs)):
            if source in table:
                self.problems.append(
                    f"step {source!r} already continues with {kind}; it cannot also have {what} "
                    f"(use branch() to choose between targets)")
        self._compiled = None

    # ------------------------------------------------------------------ compile
    def compile(self):
        """Check the workflow and build its Agent Step Graph; raises WorkflowError."""
        if self._compiled is None:
            from agentrt.graph.compile import compile_workflow
            self._compiled = compile_workflow(self)
        return self._compiled

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, state={self.state.__name__}, steps={list(self.steps)})"
