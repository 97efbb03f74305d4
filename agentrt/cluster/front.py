"""The cluster front without HTTP: route each OpenAI request by program, call the replica, and
when a replica dies under a request, mark it dead and answer from another replica (the request
carries the whole conversation, so the new replica recomputes the program's context: nothing is
lost). A watcher pings every replica: a dead one that answers again (Ray restarted it) rejoins
with an empty cache.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agentrt.cluster.ray_replicas import ReplicaGone
from agentrt.cluster.router import Decision, NoReplicaError, Router, text_blocks, token_blocks

MAX_TRACKED_PROGRAMS = 10_000


def routing_blocks(kind: str, body: dict) -> tuple[list[int], int]:
    """The chained block hashes the router matches a request on, and its size (characters or
    tokens): the messages' roles and text in order (chat), or the prompt (completions)."""
    if kind == "chat":
        parts = []
        for m in body.get("messages") or ():
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
            parts.append(f"<{m.get('role')}>{content or ''}")
        text = "".join(parts)
        return text_blocks(text), len(text)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        return token_blocks(prompt), len(prompt)
    return text_blocks(str(prompt or "")), len(str(prompt or ""))


@dataclass(slots=True)
class FrontCounters:
    requests: int = 0
    failovers: int = 0           # requests answered by another replica after theirs died
    replica_deaths: int = 0
    rejoins: int = 0


class ClusterFront:
    def __init__(self, replicas, router: Router, *, health_interval: float = 0.5, ping_timeout: float = 2.0):
        self.replicas, self.router = replicas, router
        self.health_interval, self.ping_timeout = health_interval, ping_timeout
        self.counters = FrontCounters()
        self._served: OrderedDict[str, set[str]] = OrderedDict()    # program -> replicas that served it

    # ---------------------------------------------------------------- requests
    def _route(self, kind: str, body: dict, program_id: str | None) -> Decision:
        return self._route_blocks(*routing_blocks(kind, body), program_id)

    def _route_blocks(self, blocks, size: int, program_id: str | None) -> Decision:
        try:
            decision = self.router.route(program_id, blocks, size)
        except NoReplicaError:
            from agentrt.server.errors import APIError
            raise APIError(503, "no replica is alive (Ray is restarting them); retry shortly",
                           code="no_replica", retry_after=2) from None
        if program_id is not None:
            self._note(program_id, decision)
        return decision

    def _note(self, program_id: str, decision: Decision) -> None:
        served = self._served.setdefault(program_id, set())
        self._served.move_to_end(program_id)
        served.add(decision.replica)
        if decision.moved_from is not None and self.router.policy == "program":
            self._tell_end(decision.moved_from, program_id)       # its old home forgets it (pins, order)
        while len(self._served) > MAX_TRACKED_PROGRAMS:
            self._served.popitem(last=False)

    def _died(self, decision: Decision, program_id: str | None) -> None:
        self.router.done(decision, program_id)
        if decision.replica in self.router.alive():
            self.router.mark_dead(decision.replica)
            self.counters.replica_deaths += 1
        self.counters.failovers += 1

    async def complete(self, kind: str, body: dict, headers: dict, program_id: str | None,
                       last: bool) -> tuple[int, dict, str]:
        """(status, OpenAI body, replica that answered)."""
        blocks, size = routing_blocks(kind, body)
        try:
            (status, answer), replica = await self._call(program_id, blocks, size, "complete",
                                                         (kind, body, headers), lambda a: last and a[0] == 200)
        except ReplicaGone:
            return 503, {"error": {"message": "every replica failed this request", "type": "service_unavailable",
                                   "param": None, "code": "no_replica"}}, ""
        return status, answer, replica

    async def call(self, program_id: str | None, blocks, size: int, method: str, *args) -> Any:
        """`method(*args)` on the replica the router picks for `program_id`, failing over."""
        return (await self._call(program_id, blocks, size, method, args, lambda _: False))[0]

    async def _call(self, program_id, blocks, size, method, args, ends) -> tuple[Any, str]:
        self.counters.requests += 1
        for _ in range(len(self.router.replicas) + 1):
            decision = self._route_blocks(blocks, size, program_id)
            try:
                answer = await self.replicas.call(decision.replica, method, *args)
            except ReplicaGone:
                self._died(decision, program_id)
                continue
            except BaseException:
                self.router.done(decision, program_id)
                raise
            self._finish(decision, program_id, ends(answer))
            return answer, decision.replica
        raise ReplicaGone("every replica failed this request")

    async def stream(self, kind: str, body: dict, headers: dict, program_id: str | None,
                     last: bool) -> AsyncIterator[dict]:
        """Chunks; a replica that dies before its first chunk is replaced, after it the stream
        ends with an error chunk (what was sent cannot be taken back)."""
        self.counters.requests += 1
        for _ in range(len(self.router.replicas) + 1):
            decision, sent, ok = self._route(kind, body, program_id), False, False
            try:
                async for chunk in self.replicas.stream(decision.replica, kind, body, headers):
                    sent = True
                    ok = "error" not in chunk
                    yield chunk
            except ReplicaGone:
                self._died(decision, program_id)
                if not sent:
                    continue
                yield {"error": {"message": f"replica {decision.replica} died mid-stream; retry the request",
                                 "type": "service_unavailable", "param": None, "code": "replica_died"}}
                return
            except BaseException:
                self.router.done(decision, program_id)
                raise
            self._finish(decision, program_id, last and ok)
            return

    def _finish(self, decision: Decision, program_id: str | None, ended: bool) -> None:
        self.router.done(decision, program_id, ended=ended)
        if ended:
            self.end_program(program_id, tell=False)
            for name in self._served.pop(program_id, set()) - {decision.replica}:
                self._tell_end(name, program_id)

    def end_program(self, program_id: str, *, tell: bool = True) -> bool:
        """End a program everywhere it ran (POST /v1/programs/{id}/end); False if unknown."""
        known = program_id in self._served or self.router.home_of(program_id) is not None
        self.router.end_program(program_id)
        if tell:
            for name in self._served.pop(program_id, set()):
                self._tell_end(name, program_id)
        return known

    def _tell_end(self, replica: str, program_id: str) -> None:
        async def tell():
            with contextlib.suppress(ReplicaGone):
                await self.replicas.call(replica, "end_program", program_id)
        asyncio.get_running_loop().create_task(tell())

    # ---------------------------------------------------------------- health
    async def watch(self) -> None:
        """Forever: ping every replica; mark the silent ones dead and the ones back alive."""
        while True:
            await asyncio.gather(*(self.check(name) for name in self.router.replicas))
            await asyncio.sleep(self.health_interval)

    async def check(self, name: str) -> bool:
        info = await self.replicas.ping(name, self.ping_timeout)
        alive = name in self.router.alive()
        if info is None and alive:
            self.router.mark_dead(name)
            self.counters.replica_deaths += 1
        elif info is not None and not alive:
            self.router.mark_alive(name)
            self.counters.rejoins += 1
        return info is not None

    def status(self) -> dict[str, Any]:
        """What `agentrt status` shows: replicas with their load and programs, the counters."""
        rows = []
        for load in self.router.loads():
            info = self.replicas.info.get(load.name, {})
            rows.append({"name": load.name, "alive": load.alive, "inflight": load.inflight,
                         "programs": load.programs, "context_size": load.context_tokens,
                         "routed_requests": load.routed_requests,
                         "routed_size": load.routed_tokens, "index_blocks": load.index_blocks,
                         "pid": info.get("pid"), "restarts": self.replicas.restarts.get(load.name, 0),
                         "engine_running": info.get("running"), "engine_waiting": info.get("waiting"),
                         "kv_blocks_in_use": info.get("blocks_in_use"), "kv_blocks": info.get("num_blocks"),
                         "prefix_hit_rate": info.get("prefix_hit_rate"),
                         "programs_paused": info.get("programs_paused"),
                         "programs_list": sorted(p for p, s in self._served.items()
                                                 if self.router.home_of(p) == load.name)[:50]})
        c = self.counters
        return {"object": "cluster", "router": self.router.policy, "replicas": rows,
                "requests": c.requests, "failovers": c.failovers, "replica_deaths": c.replica_deaths,
                "rejoins": c.rejoins, "moves": self.router.moves}
