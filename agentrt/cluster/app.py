"""The one OpenAI-compatible endpoint in front of N replicas (`agentrt serve --replicas N`).

Same routes and program fields as `agentrt serve` (agentrt.server.app), plus GET /v1/cluster (the
replicas, their load and programs: what `agentrt status` prints). Each answer names the replica
that produced it in the `X-Agentrt-Replica` header. /metrics adds per-replica figures labelled
`replica`.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agentrt.cluster.front import ClusterFront
from agentrt.cluster.metrics import ClusterMetrics
from agentrt.server.app import SSE_HEADERS, BodyLimit, _sse, program_ids
from agentrt.server.errors import APIError, install_handlers
from agentrt.server.schemas import ChatRequest, CompletionRequest
from agentrt.server.service import ServiceState

REPLICA_HEADER = "X-Agentrt-Replica"
_FORWARDED = ("x-program-id", "x-agent-id", "x-is-last-step")


class _FrontService:
    """What agentrt.server.run's drain reads (`.state.draining`)."""

    def __init__(self):
        self.state = ServiceState()


def create_cluster_app(front: ClusterFront, *, model_name: str, api_key: str | None = None,
                       max_body_bytes: int = 4 << 20, on_close=None) -> FastAPI:
    """An app over `front`; its lifespan runs the replica watcher. `on_close`: called at shutdown
    (e.g. ReplicaSet.shutdown)."""
    service, metrics = _FrontService(), ClusterMetrics(front)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = asyncio.create_task(front.watch(), name="agentrt-replica-watch")
        try:
            yield
        finally:
            service.state.draining = True
            watcher.cancel()
            if on_close is not None:
                on_close()

    app = FastAPI(title="agentrt cluster", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.metrics, app.state.front = service, metrics, front
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if given != api_key:
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        alive = front.router.alive()
        if service.state.draining:
            return APIError(503, "the server is shutting down", code="shutting_down").response()
        if not alive:
            return APIError(503, "no replica is alive", code="no_replica").response()
        return {"status": "ok", "model": model_name, "replicas": len(front.router.replicas), "alive": len(alive)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/cluster")
    async def cluster(request: Request):
        authorize(request)
        return front.status()

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "agentrt"}]}

    @app.post("/v1/programs/{program_id}/end")
    async def end_program(program_id: str, request: Request):
        authorize(request)
        if not front.end_program(program_id):
            raise APIError(404, f"no running program {program_id!r}", param="program_id", code="program_not_found")
        return {"id": program_id, "object": "program", "ended": True}

    async def serve(kind: str, body, request: Request) -> Response:
        authorize(request)
        if service.state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down", retry_after=5)
        ids = program_ids(body, request.headers)
        raw = body.model_dump(exclude_unset=True)
        headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
        if body.stream:
            return await _stream(front, kind, raw, headers, ids, metrics)
        status, answer, replica = await front.complete(kind, raw, headers, ids.program_id, ids.is_last_step)
        metrics.answered(replica, status)
        return JSONResponse(answer, status_code=status, headers={REPLICA_HEADER: replica} if replica else None)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await serve("chat", body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await serve("text", body, request)

    return app


async def _stream(front: ClusterFront, kind: str, raw: dict, headers: dict, ids, metrics) -> Response:
    chunks = front.stream(kind, raw, headers, ids.program_id, ids.is_last_step)
    first = await chunks.__anext__()             # errors before any byte is sent become a status
    if "error" in first and "status" in first:
        await chunks.aclose()
        status = first.pop("status")
        metrics.answered("", status)
        return JSONResponse(first, status_code=status)

    async def sse():
        try:
            yield _sse(first)
            async for chunk in chunks:
                chunk.pop("status", None)
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        finally:
            await chunks.aclose()
    return StreamingResponse(sse(), media_type="text/event-stream", headers=SSE_HEADERS)
