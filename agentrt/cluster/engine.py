"""`Runtime(replicas=N)`: the runtime's engine interface over N Ray replicas.

`ClusterEngine` stands where an AsyncLLMEngine stands for the runtime (`generate`, `tokenizer`,
`end_program`, `close`, `clock`): each request goes through the router (by its program id, so a
program's turns stay on its replica) to a replica actor, whose own policy and program tracker
schedule it. A replica that dies under a request is marked dead and the request runs again on
another (its prompt is the whole context, recomputed there); the watcher lets it rejoin.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agentrt.clock import MONOTONIC
from agentrt.cluster.ray_replicas import ReplicaGone, ReplicaSet, ReplicaSpec, require_ray
from agentrt.cluster.router import Router, token_blocks
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta, RequestOutput


class ClusterEngine:
    def __init__(self, replicas: ReplicaSet, router: Router, tokenizer, *, own: bool = True,
                 health_interval: float = 0.5):
        from agentrt.cluster.front import ClusterFront
        self.replicas, self.router, self.tokenizer, self._own = replicas, router, tokenizer, own
        self.front = ClusterFront(replicas, router, health_interval=health_interval)
        self.clock = MONOTONIC
        self._watcher: asyncio.Task | None = None

    @classmethod
    def start(cls, model: str, replicas: int, *, router: str = "program", policy: str | None = "agentrt",
              num_cpus: int | None = None, **engine_config: Any) -> "ClusterEngine":
        """N replicas of `model` on Ray (a local cluster of `num_cpus` unless Ray is already
        initialized), each with `engine_config` (EngineConfig fields; one thread each by default)."""
        from agentrt.engine.loader import load_model
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(num_cpus=num_cpus or replicas, include_dashboard=False, log_to_driver=False)
        engine_config.setdefault("num_threads", 1)
        replica_set = ReplicaSet(replicas, ReplicaSpec(model, engine_config, policy))
        tokenizer = load_model(model, dense=False).tokenizer
        return cls(replica_set, Router(router, replica_set.names), tokenizer)

    async def ready(self, timeout: float = 300.0) -> None:
        await self.replicas.wait_ready(timeout)

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self.front.watch(), name="agentrt-replica-watch")

    async def generate(self, prompt, params: SamplingParams | dict | None = None, *, meta: RequestMeta | None = None,
                       request_id: str | None = None) -> RequestOutput:
        """One request on the replica the router picks (its program's home)."""
        self._watch()
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        params = SamplingParams(**params) if isinstance(params, dict) else (params or SamplingParams())
        pid = meta.program_id if meta is not None else None
        program = (pid, meta.agent_id if meta is not None else None, False, None)
        return await self.front.call(pid, token_blocks(ids), len(ids), "generate_ids", ids, params.model_dump(), program)

    def end_program(self, program_id: str) -> None:
        with contextlib.suppress(RuntimeError):          # no running loop: nothing to tell
            self.front.end_program(program_id)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._own:
            self.replicas.shutdown()


__all__ = ["ClusterEngine", "ReplicaGone"]
