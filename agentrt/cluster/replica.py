"""One engine replica as the cluster front sees it: an AsyncLLMEngine with its own KV tiers, its
own workflow-aware scheduler (policy) and its own program tracker, which turns the program ids a
request carries into the scheduler's typed events (as `agentrt serve` does).

The Ray actor (agentrt.cluster.ray_replicas) wraps one; the simulator (agentrt.cluster.sim) runs
many in one process on one virtual clock.
"""
from __future__ import annotations

from typing import Any

from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestOutput
from agentrt.server.programs import ProgramIds, ProgramTracker


class Replica:
    """`policy`: lru, continuum, kvflow, agentrt, or None (the engine's plain LRU, no tracking)."""

    def __init__(self, name: str, engine: AsyncLLMEngine, *, policy: str | None = "agentrt",
                 idle_timeout: float = 600.0):
        from agentrt.sched import WorkflowScheduler
        self.name, self.engine, self.policy = name, engine, policy
        self.door = None
        if policy is not None:
            self.door = WorkflowScheduler(policy, kv=engine.kv_spec, clock=engine.clock,
                                          prefetch=lambda ids: engine.prefetch(ids, evict=True))
            engine.install_policy(self.door.engine_policy)
        self.tracker = ProgramTracker(self.door, engine.clock, end_program=engine.end_program,
                                      idle_timeout=idle_timeout)
        self.started = self.requests = self.prompt_tokens = self.cached_tokens = self.output_tokens = 0

    async def generate(self, prompt_ids: list[int], params: SamplingParams, ids: ProgramIds, *,
                       tool: str | None = None, request_id: str | None = None) -> RequestOutput:
        """Run one request of program `ids` (None program: a plain request). `tool`: the tool
        the reply hands control to (the program pauses on it until its next request)."""
        self.started += 1
        rid = request_id or f"{self.name}-{self.started}"
        meta = self.tracker.begin(ids, rid, prompt_ids)
        out = None
        try:
            out = await self.engine.generate(prompt_ids, params, meta=meta, request_id=rid)
        finally:
            self.tracker.finish(ids, rid, prompt_ids, out.token_ids if out is not None else [],
                                out.num_cached_tokens if out is not None else 0, tool if out is not None else None)
        self.requests += 1
        self.prompt_tokens += len(prompt_ids)
        self.cached_tokens += out.num_cached_tokens
        self.output_tokens += len(out.token_ids)
        return out

    def end_program(self, program_id: str) -> bool:
        return self.tracker.end(program_id)

    def stats(self) -> dict[str, Any]:
        """The engine's stats with this replica's request counts and programs."""
        s = self.engine.engine.stats()
        return {**s, "replica": self.name, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "output_tokens": self.output_tokens,
                "programs": len(self.tracker.programs), "programs_paused": self.tracker.paused,
                "programs_started": self.tracker.started, "programs_ended": self.tracker.ended}
