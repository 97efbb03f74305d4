"""A pipeline of agents in KVFlow's shape: ten agents run one after another, each with a fixed
prompt of its own (thousands of tokens: its role, instructions and examples) after a prefix that
every agent shares (the team's charter), and each hands its output to the next. Between agents a
program waits on a short tool call (fetching what the next agent reads). Many such workflows run
at once, so the fixed prompts compete for KV memory and the one needed next is the one to keep.

KVFlow (Pan et al., 2025) evaluates workflows like this on SGLang with a host tier (HiCache):
steps-to-execution eviction plus prefetch of the next agent's prefix, up to 2.19x faster with
many concurrent workflows.

    agentrt run workflows/agent_pipeline.py                       # one small pipeline
    agentrt bench workflows -w agent_pipeline --programs 64 --sim h100-llama3-8b
"""
from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel

from agentrt import Agent, SamplingParams, Workflow, tool
from agentrt.bench.swe import text

AGENTS = ("intake", "planner", "researcher", "analyst", "architect", "coder", "tester", "reviewer", "editor",
          "publisher")


class Job(BaseModel):
    task: str = "Job 0: summarise the quarterly incident reports and propose three fixes."
    handoff: str = ""


def _fetch(seconds: float):
    @tool(name="fetch")
    async def fetch(stage: str) -> str:
        """Fetch what the next agent reads (a fixed-time stand-in)."""
        await asyncio.sleep(seconds)
        return f"materials for {stage}"
    return fetch


def build(*, agents: int = 10, shared_tokens: int = 1000, agent_tokens: int = 2000, output_tokens: int = 64,
          tool_seconds: float = 0.5, variant: int = 0) -> Workflow:
    """`agents` stages; every agent's system prompt is the shared prefix (`shared_tokens` words)
    and then its own `agent_tokens` words; each turn writes exactly `output_tokens`. Pipelines of
    another `variant` (another team doing another kind of job) share the prefix but not the agents'
    own prompts."""
    if not 1 <= agents <= len(AGENTS):
        raise ValueError(f"agents: 1 to {len(AGENTS)}")
    shared = "You are one member of a team that works as a pipeline. " + text(random.Random(99), shared_tokens)
    wf = Workflow("agent_pipeline" if not variant else f"agent_pipeline_{variant}", Job, output="handoff",
                  description=f"{agents} agents in a row, each with a fixed {agent_tokens}-word prompt after a "
                              f"{shared_tokens}-word shared prefix, a tool call between agents")
    fetch = _fetch(tool_seconds)
    names = AGENTS[:agents]
    for i, name in enumerate(names):
        own = f"\nYour role: {name}. " + text(random.Random(i + 1000 * variant), agent_tokens)
        agent = Agent(name, shared + own, params=SamplingParams(max_tokens=output_tokens, ignore_eos=True))
        wf.llm(name, agent, "{task}\nWhat the previous stage handed over: {handoff}", output="handoff")
        if i + 1 < len(names):
            wf.tool(f"fetch_{i}", fetch, {"stage": names[i + 1]}, output=None)
    steps = [s for n in names for s in (n, f"fetch_{names.index(n)}")][:-1]
    wf.sequence(*steps)
    return wf


workflow = build(shared_tokens=100, agent_tokens=200, output_tokens=16, tool_seconds=0.05)
