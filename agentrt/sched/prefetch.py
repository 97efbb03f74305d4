"""Prefetch the next agent's prefix: when a program pauses on a tool, the agents that read the
tool's result will resend their conversation; its blocks are brought back from the host tier
while the tool runs. kvflow asks at once (the agent is next in line); agentrt asks shortly
before the tool is predicted to return, when other programs' traffic has had its chance to push
those blocks out. lru and continuum load on demand."""
from __future__ import annotations

import asyncio

LEAD_SECONDS = 0.05          # how long before the predicted return agentrt starts the copy


class NextAgentPrefetcher:
    """An event sink for `tool_start` (a no-op when the engine has no host tier). Prefetches
    evict through the policy, so they displace only blocks it ranks below the waiting agent's."""

    def __init__(self, runtime, *, timed: bool = False, predictor=None):
        self.runtime, self.timed, self.predictor = runtime, timed, predictor
        self.requested = 0                     # prefetch requests made (for reports and tests)

    def __call__(self, event) -> None:
        if event.event != "tool_start":
            return
        if not self.timed or self.predictor is None:
            return self._prefetch(event.program, event.data["step"])
        delay = self.predictor.quantile(event.data["tool"], 0.5) - LEAD_SECONDS
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._prefetch, event.program, event.data["step"])

    def _prefetch(self, program_id: str, step_name: str) -> None:
        program = self.runtime.programs.get(program_id)
        if program is None:                    # ended meanwhile
            return
        agents = set(program.wf.analysis.next_agents(step_name))
        step = program.wf.steps.get(step_name)
        if getattr(step, "agent", None):       # a model-driven call: the calling agent resumes
            agents.add(step.agent)
        for (agent, _lane), conversation in list(program.conversations.items()):
            if agent in agents and conversation.messages:
                self.runtime.engine.prefetch(conversation.prompt_ids(self.runtime.tokenizer), evict=True)
                self.requested += 1
