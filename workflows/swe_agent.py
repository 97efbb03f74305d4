"""A SWE-agent-shaped episode: an engineer agent fixes an issue in 20-60 turns, each turn an
assistant reply that calls one tool, a pause while the tool runs, and the tool's output appended
to the conversation. The conversation only grows (a shared system prompt, the issue, every reply
and every output), so contexts reach tens of thousands of tokens at full scale.

The episode is data: `plan` holds each turn's reply length, tool, duration and output length
(`agentrt.bench.swe` draws them from real coding-agent traces), so every policy of a benchmark
runs exactly the same work. The tools are stand-ins that wait for their duration and return text
of their length; each tool name is a step of its own, so the scheduler learns each tool's pauses.

    agentrt run workflows/swe_agent.py                 # one small episode (scale 0.05, 20 turns)
    agentrt run workflows/swe_agent.py -n 4 --policy agentrt
    agentrt bench workflows -w swe_agent --scale 0.125 --programs 16
"""
from __future__ import annotations

import asyncio
import random
from typing import Annotated

from pydantic import BaseModel, Field

from agentrt import END, Agent, SamplingParams, Workflow, append, tool
from agentrt.bench.swe import SweShape, swe_programs, system_prompt, text

TOOLS = ("Bash", "exec_command", "write_stdin", "Write", "WebFetch", "WebSearch")   # TraceLab's tool names
OTHER = "Bash"                                                                      # any other name runs as Bash
MAX_TURNS = 60


def episode_input(shape: SweShape, index: int = 0) -> dict:
    """Program `index` of `shape`'s episodes as this workflow's input."""
    return program_input(swe_programs(shape)[index])


def program_input(p) -> dict:
    """One episode (an agentrt.bench.swe.SweProgram) as this workflow's input."""
    return {"task": p.task, "plan": [(t.output_tokens, t.tool, t.tool_seconds, t.result_tokens) for t in p.turns]}


DEMO = SweShape(programs=1, scale=0.05, time_scale=10.0, min_turns=20, max_turns=20)   # `agentrt run`'s episode


class Episode(BaseModel):
    task: str = Field(default_factory=lambda: episode_input(DEMO)["task"])
    plan: list[tuple[int, str, float, int]] = Field(    # per turn: reply tokens, tool, seconds, output tokens
        default_factory=lambda: episode_input(DEMO)["plan"])
    observations: Annotated[list[str], append] = Field(default_factory=list)


def step_name(tool_name: str) -> str:
    return (tool_name if tool_name in TOOLS else OTHER).lower()


def _stand_in(name: str):
    @tool(name=name)
    async def call(seconds: float, tokens: int, seed: str) -> str:
        """Run a tool call of known duration and output length (a stand-in)."""
        await asyncio.sleep(seconds)
        return text(random.Random(seed), tokens)
    return call


def _prompt(s: Episode) -> str:
    return s.observations[-1] if s.observations else s.task


def _params(s: Episode) -> SamplingParams:
    return SamplingParams(max_tokens=s.plan[len(s.observations)][0], ignore_eos=True)


def _route(s: Episode) -> str:
    return step_name(s.plan[len(s.observations)][1])


def _args(turn_field: int):
    return lambda s: s.plan[len(s.observations)][turn_field]


def _observed(s: Episode) -> dict:
    return {}


def _more(s: Episode) -> str:
    return "act" if len(s.observations) < len(s.plan) else END


def build(*, shape: SweShape | None = None) -> Workflow:
    """The workflow; `shape` sets the shared system prompt's length (its `scale` and `system_tokens`)."""
    shape = shape or SweShape(programs=1, scale=0.05)
    engineer = Agent("engineer", system_prompt(shape), params=SamplingParams(max_tokens=16, ignore_eos=True))
    wf = Workflow("swe_agent", Episode, output="observations",
                  description="engineer turn -> one tool call (its pause) -> output appended, 20-60 times")
    wf.llm("act", engineer, _prompt, output=None, params=_params)
    steps = [step_name(t) for t in TOOLS]
    wf.branch("act", _route, to=steps)
    for name, step in zip(TOOLS, steps):
        wf.tool(step, _stand_in(name), {"seconds": _args(2), "tokens": _args(3),
                                        "seed": lambda s: f"{s.task}/{len(s.observations)}"}, output="observations")
        wf.edge(step, "observe")
    wf.python("observe", _observed)        # one place the loop closes (the tools are its branches)
    wf.branch("observe", _more, to=["act", END], max_loops=MAX_TURNS, exit=END)
    return wf


workflow = build()
