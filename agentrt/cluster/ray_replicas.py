"""Engine replicas as Ray actors (`pip install 'agentrt[ray]'`; Ray is imported only when used).

Why plain actors and not Ray Serve deployments: the router is the point of this front, and it
routes by program, with per-program state (a program's home replica, its turns in flight) that
must see every request of every program in one place. Serve's own proxy and request routers
(power-of-two, PrefixCacheAffinityRouter) pick a replica per request behind a DeploymentHandle;
plugging our router in would mean a custom RequestRouter running inside every handle, its program
table split across them. Actors give one front that owns the routing decisions, named handles we
can call, kill and watch, and Ray's own fault tolerance (`max_restarts`: a dead replica is
restarted and rejoins) without Serve's controller, HTTP proxy and autoscaler, which the embedded
server already covers (FastAPI, bounded queue, drain on SIGTERM).

* `ReplicaServer`  the actor's body: one engine + policy + program tracker (agentrt.cluster.replica)
                   and the OpenAI service of `agentrt serve` (agentrt.server.service)
* `ReplicaSet`     the front's side: starts N actors, calls them, watches them (dead / rejoined)
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

INSTALL_HINT = "replicas run on Ray, which is not installed: pip install 'agentrt[ray]' (or pip install ray)"


def require_ray():
    """The ray module, or RuntimeError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


class ReplicaGone(RuntimeError):
    """The replica's actor died (or is restarting) while it held the request."""


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """How each replica builds its engine (the same for all)."""
    model: str
    engine_config: dict[str, Any] = field(default_factory=dict)   # EngineConfig fields
    policy: str | None = "agentrt"
    model_name: str | None = None        # what clients send as `model` (default: `model`)
    max_pending: int = 256
    default_max_tokens: int = 1024
    idle_timeout: float = 600.0

    @property
    def served_name(self) -> str:
        return self.model_name or self.model


class ReplicaServer:
    """One replica (wrapped by `ray.remote` in ReplicaSet). Answers are (status, body) pairs, so
    that an OpenAI error crosses the actor boundary as data, not as a pickled exception."""

    def __init__(self, name: str, spec: ReplicaSpec):
        from agentrt.cluster.replica import Replica
        from agentrt.engine.async_engine import AsyncLLMEngine
        from agentrt.server.service import Service
        self.name, self.spec = name, spec
        engine = AsyncLLMEngine.from_pretrained(spec.model, **spec.engine_config)
        self.replica = Replica(name, engine, policy=spec.policy, idle_timeout=spec.idle_timeout)
        self.service = Service(engine, self.replica.tracker, model_name=spec.served_name,
                               max_pending=spec.max_pending, default_max_tokens=spec.default_max_tokens)

    def _job(self, kind: str, body: dict, headers: dict):
        from agentrt.server.app import program_ids
        from agentrt.server.schemas import ChatRequest, CompletionRequest
        req = (ChatRequest if kind == "chat" else CompletionRequest).model_validate(body)
        job = self.service.chat_job(req) if kind == "chat" else self.service.completion_job(req)
        return job, program_ids(req, headers)

    async def ping(self) -> dict[str, Any]:
        """Alive: its process id and figures (what the front's /metrics and /v1/cluster show)."""
        return {"pid": os.getpid(), "pending": self.service.state.pending, **self.replica.stats()}

    async def complete(self, kind: str, body: dict, headers: dict) -> tuple[int, dict]:
        from agentrt.server.errors import APIError
        try:
            job, ids = self._job(kind, body, headers)
            slot = self.service.admit()
            try:
                return 200, await self.service.complete(job, ids)
            finally:
                slot.release()
        except APIError as exc:
            return exc.status, exc.body()

    async def stream(self, kind: str, body: dict, headers: dict) -> AsyncIterator[dict]:
        """The chunks of a streamed answer; an error is one chunk {"error": ..., "status": ...}."""
        from agentrt.server.errors import APIError
        try:
            job, ids = self._job(kind, body, headers)
            slot = self.service.admit()
            try:
                async for chunk in self.service.stream(job, ids):
                    yield chunk
            finally:
                slot.release()
        except APIError as exc:
            yield {**exc.body(), "status": exc.status}

    async def generate_ids(self, prompt_ids: list[int], params: dict, program: tuple, tool: str | None = None):
        """Token ids in, a RequestOutput out (Runtime(replicas=N)); program: ProgramIds fields."""
        from agentrt.engine.params import SamplingParams
        from agentrt.server.programs import ProgramIds
        return await self.replica.generate(prompt_ids, SamplingParams(**params), ProgramIds(*program), tool=tool)

    def end_program(self, program_id: str) -> bool:
        return self.replica.end_program(program_id)


class ReplicaSet:
    """N ReplicaServer actors (`r0`, `r1`, ...), restarted by Ray when they die (`max_restarts`).
    `cpus`: Ray CPUs each actor takes (one engine thread each, by default)."""

    def __init__(self, n: int, spec: ReplicaSpec, *, cpus: float = 1.0, max_restarts: int = -1):
        ray = require_ray()
        if n < 1:
            raise ValueError(f"need at least one replica, got {n}")
        self.ray, self.spec = ray, spec
        actor = ray.remote(ReplicaServer)
        self.handles = {f"r{i}": actor.options(num_cpus=cpus, max_restarts=max_restarts, max_task_retries=0,
                                               max_concurrency=1000).remote(f"r{i}", spec) for i in range(n)}
        self.info: dict[str, dict[str, Any]] = {}       # the last ping of each replica
        self.restarts: dict[str, int] = {name: 0 for name in self.handles}

    @property
    def names(self) -> list[str]:
        return list(self.handles)

    def _gone(self):
        ex = self.ray.exceptions
        return (ex.RayActorError, ex.ActorUnavailableError, ex.ActorDiedError)

    async def call(self, name: str, method: str, *args) -> Any:
        """Await `method(*args)` on replica `name`; ReplicaGone if its actor dies meanwhile."""
        try:
            return await getattr(self.handles[name], method).remote(*args)
        except self._gone() as exc:
            raise ReplicaGone(f"replica {name} is gone: {type(exc).__name__}") from None

    async def stream(self, name: str, kind: str, body: dict, headers: dict) -> AsyncIterator[dict]:
        refs = self.handles[name].stream.options(num_returns="streaming").remote(kind, body, headers)
        try:
            async for ref in refs:
                yield await ref
        except self._gone() as exc:
            raise ReplicaGone(f"replica {name} is gone: {type(exc).__name__}") from None

    async def ping(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """The replica's figures, or None if it does not answer within `timeout`."""
        try:
            info = await asyncio.wait_for(self.call(name, "ping"), timeout)
        except (ReplicaGone, asyncio.TimeoutError, *self._gone()):
            return None
        old = self.info.get(name)
        if old is not None and old["pid"] != info["pid"]:
            self.restarts[name] += 1
        self.info[name] = info
        return info

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Until every replica answers (its model loaded); RuntimeError after `timeout`."""
        refs = [h.ping.remote() for h in self.handles.values()]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*refs), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the replicas did not start within {timeout:.0f} s") from None
        self.info.update(zip(self.handles, infos))

    def kill(self, name: str) -> None:
        """Kill one replica's actor as a crash would (Ray restarts it)."""
        self.ray.kill(self.handles[name], no_restart=False)

    def shutdown(self) -> None:
        for handle in self.handles.values():
            self.ray.kill(handle, no_restart=True)
