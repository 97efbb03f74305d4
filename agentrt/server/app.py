"""The FastAPI app of `agentrt serve`: OpenAI-compatible routes over one AsyncLLMEngine.

>>> engine = AsyncLLMEngine.from_pretrained("smollm2-135m")
>>> app = create_app(engine, model_name="smollm2-135m", policy="agentrt")
>>> uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics, POST /v1/programs/{id}/end, GET /v1/programs/{id}. A client that disconnects
aborts its request (its KV blocks are freed before the engine's next step).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrt.server.errors import APIError, install_handlers, invalid
from agentrt.server.graphs import NodeGraph
from agentrt.server.metrics import CONTENT_TYPE, ServerMetrics
from agentrt.server.programs import ProgramIds, ProgramTracker
from agentrt.server.schemas import ChatRequest, CompletionRequest, ProgramFields
from agentrt.server.service import Job, Service
from agentrt.server.tenancy import Keys, Tenancy

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TRUE = {"1", "true", "yes", "on"}


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 (Content-Length, or as it streams)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or {}).get(b"content-length")
        too_large = APIError(413, f"the request body is over the server's limit of {self.limit} bytes "
                                  "(--max-body-bytes)", code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
            if metrics is not None:
                metrics.errors.labels("413").inc()
            return await too_large.response()(scope, receive, send)
        seen = 0
        self_limit = self.limit

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self_limit:
                    raise _TooLarge()
            return message
        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_large.response()(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised from `receive`: an HTTPException, so that FastAPI's body reading lets it through."""

    def __init__(self) -> None:
        super().__init__(413)


def program_ids(body: ProgramFields, headers=None) -> ProgramIds:
    """The program fields of a body, or of X-Program-Id / X-Agent-Id / X-Is-Last-Step headers."""
    h = headers if headers is not None else {}
    pid = body.program or h.get("x-program-id") or None
    agent = body.agent_id or h.get("x-agent-id") or None
    last = body.is_last_step or h.get("x-is-last-step", "").lower() in _TRUE
    graph = None
    if body.program_graph is not None:
        if pid is None:
            raise invalid("program_graph needs a program_id", "program_graph")
        try:
            graph = NodeGraph.from_spec(body.program_graph)
        except ValueError as exc:
            raise invalid(str(exc), "program_graph") from None
    return ProgramIds(pid, agent, last, graph)


def create_app(engine, *, model_name: str, policy: str | None = "agentrt", api_key: Keys = None,
               max_pending: int = 256, max_body_bytes: int = 4 << 20, idle_timeout: float = 600.0,
               default_max_tokens: int = 1024, close_engine: bool = True, scheduler=None) -> FastAPI:
    """An app over `engine` (installs the policy's scheduler on it: call before any request).
    `scheduler`: a WorkflowScheduler of your own instead of `policy`'s. `api_key`: one key, several
    (each a tenant with a prefix cache of its own) or {key: tenant} (see agentrt.server.tenancy)."""
    door = scheduler
    if door is None and policy is not None:
        from agentrt.sched import WorkflowScheduler
        door = WorkflowScheduler(policy, kv=engine.kv_spec, clock=engine.clock,
                                 prefetch=lambda ids: engine.prefetch(ids, evict=True))
    if door is not None:
        engine.install_policy(door.engine_policy)
    tracker = ProgramTracker(door, engine.clock, end_program=engine.end_program, idle_timeout=idle_timeout)
    tenancy = Tenancy(api_key)
    service = Service(engine, tracker, model_name=model_name, max_pending=max_pending,
                      default_max_tokens=default_max_tokens, tenancy=tenancy)
    metrics = service.metrics = ServerMetrics(engine, door, tracker, service.state)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def reap():
            while True:
                await asyncio.sleep(max(0.05, min(idle_timeout / 4, 30.0)))
                tracker.reap()
        reaper = asyncio.create_task(reap(), name="agentrt-program-reaper")
        try:
            yield
        finally:
            service.state.draining = True
            reaper.cancel()
            if close_engine:
                await engine.close()

    app = FastAPI(title="agentrt", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.tracker, app.state.door, app.state.metrics = service, tracker, door, metrics
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def authorize(request: Request) -> str | None:
        """The caller's tenant (None without keys), or a 401."""
        if not tenancy.required:
            return None
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        return tenancy.authenticate(given)

    @app.get("/health")
    async def health():
        if service.state.dead:
            return APIError(503, f"the engine is dead: {service.state.dead}", code="engine_dead").response()
        if service.state.draining:
            return APIError(503, "the server is shutting down", code="shutting_down").response()
        return {"status": "ok", "model": model_name, "pending": service.state.pending}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [_model_card(model_name, service.max_model_len)]}

    @app.get("/v1/models/{model:path}")
    async def model_card(model: str, request: Request):
        authorize(request)
        service.check_model(model)
        return _model_card(model_name, service.max_model_len)

    @app.post("/v1/programs/{program_id}/end")
    async def end_program(program_id: str, request: Request):
        if not tracker.end(tenancy.program_key(authorize(request), program_id)):
            raise APIError(404, f"no running program {program_id!r}", param="program_id", code="program_not_found")
        return {"id": program_id, "object": "program", "ended": True}

    @app.get("/v1/programs/{program_id}")
    async def describe_program(program_id: str, request: Request):
        info = tracker.describe(tenancy.program_key(authorize(request), program_id))
        if info is None:
            raise APIError(404, f"no running program {program_id!r}", param="program_id", code="program_not_found")
        return {**info, "id": program_id}

    async def serve(body, request: Request, job_of) -> Response:
        tenant = authorize(request)
        ids = tenancy.scope(tenant, program_ids(body, request.headers))
        job: Job = job_of(body, tenant)
        slot = service.admit()
        if body.stream:
            return await _stream(service, job, ids, slot, request, metrics)
        try:
            return JSONResponse(await _until_disconnected(service.complete(job, ids), request, metrics))
        finally:
            slot.release()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await serve(body, request, service.chat_job)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await serve(body, request, service.completion_job)

    return app


def _model_card(name: str, max_model_len: int) -> dict:
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "agentrt",
            "max_model_len": max_model_len}


async def _until_disconnected(work, request: Request, metrics):
    """Run `work`; if the client goes away first, cancel it (which aborts the engine request)."""
    task = asyncio.ensure_future(work)

    async def disconnected():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            metrics.disconnects.inc()
            with contextlib.suppress(asyncio.CancelledError, APIError):
                await task
            raise APIError(499, "client closed the request", code="client_disconnected")
    return task.result()


async def _stream(service: Service, job: Job, ids: ProgramIds, slot, request: Request, metrics) -> Response:
    chunks = service.stream(job, ids)
    try:
        first = await chunks.__anext__()    # start it now: the slot is released by its finally
    except BaseException:
        slot.release()
        raise

    async def sse() -> AsyncIterator[bytes]:
        finished = False
        try:
            yield _sse(first)
            async for chunk in chunks:
                yield _sse(chunk)
            finished = True
            yield b"data: [DONE]\n\n"
        except APIError as exc:            # after the headers went out: an error event, as OpenAI sends
            finished = True
            yield _sse(exc.body())
            yield b"data: [DONE]\n\n"
        finally:
            slot.release()
            await chunks.aclose()
            if not finished:
                metrics.disconnects.inc()
    return StreamingResponse(sse(), media_type="text/event-stream", headers=SSE_HEADERS)


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
