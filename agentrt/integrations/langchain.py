"""A LangChain chat model on agentrt: over an in-process engine, or over `agentrt serve`.

>>> llm = ChatAgentrt(model="smollm2-135m")                                   # in-process
>>> llm = ChatAgentrt(model="smollm2-135m", base_url="http://127.0.0.1:8000/v1")   # a server
>>> agent = create_react_agent(llm, [get_weather]); llm.use_graph(agent)
>>> agent.invoke({"messages": [("user", "Weather in Paris?")]}, {"configurable": {"thread_id": "t1"}})

Inside LangGraph, each call carries its program: the run's `thread_id` is the program id and the
node (`langgraph_node`) the agent id, so the server's tracker sees programs, agents and tool
pauses. `use_graph(compiled)` hands over the graph's nodes and edges (`get_graph()`), from which
agentrt derives steps-to-execution for every node: kvflow and agentrt rank blocks by it.
`bind_tools`, `invoke`/`ainvoke`, `stream`/`astream` work as for any LangChain chat model.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables.config import ensure_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, PrivateAttr

from agentrt.server.graphs import END_NODES, START_NODES, NodeGraph


def langgraph_program_graph(compiled) -> NodeGraph:
    """A compiled LangGraph graph as agentrt's node graph: its nodes that call the model are
    agents; tool nodes (ToolNode, or a name with "tool" in it) run between them."""
    g = compiled.get_graph()
    edges = [(e.source, e.target) for e in g.edges]
    agents = [n for n, node in g.nodes.items() if n not in START_NODES and n not in END_NODES
              and type(getattr(node, "data", None)).__name__ != "ToolNode" and "tool" not in n.lower()]
    return NodeGraph(edges, agents=agents)


class _InProcess:
    """An engine, its scheduler and the serving core on a private event loop thread."""

    def __init__(self, model: str, policy: str | None, engine_config: dict[str, Any], engine=None):
        from agentrt.engine import AsyncLLMEngine
        from agentrt.server.app import create_app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agentrt-inprocess", daemon=True)
        self.thread.start()
        self.engine = engine or AsyncLLMEngine.from_pretrained(model, **engine_config)
        self.app = create_app(self.engine, model_name=model, policy=policy)
        self.service = self.app.state.service

    def _job(self, body: dict):
        from agentrt.server.app import program_ids
        from agentrt.server.schemas import ChatRequest
        req = ChatRequest(**body)
        return self.service.chat_job(req), program_ids(req)

    async def _chat(self, body: dict) -> dict:
        job, ids = self._job(body)
        slot = self.service.admit()
        try:
            return await self.service.complete(job, ids)
        finally:
            slot.release()

    async def _stream_to(self, body: dict, queue: asyncio.Queue, loop) -> None:
        try:
            job, ids = self._job(body)
            slot = self.service.admit()
            try:
                async for chunk in self.service.stream(job, ids):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            finally:
                slot.release()
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    def chat(self, body: dict) -> dict:
        return asyncio.run_coroutine_threadsafe(self._chat(body), self.loop).result()

    async def achat(self, body: dict) -> dict:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._chat(body), self.loop))

    async def astream(self, body: dict) -> AsyncIterator[dict]:
        queue: asyncio.Queue = asyncio.Queue()
        asyncio.run_coroutine_threadsafe(self._stream_to(body, queue, asyncio.get_running_loop()), self.loop)
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stream(self, body: dict) -> Iterator[dict]:
        import queue as queue_mod
        q: queue_mod.Queue = queue_mod.Queue()

        async def pump():
            try:
                async for chunk in self.astream_local(body):
                    q.put(chunk)
                q.put(None)
            except BaseException as exc:
                q.put(exc)
        asyncio.run_coroutine_threadsafe(pump(), self.loop)
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def astream_local(self, body: dict) -> AsyncIterator[dict]:
        job, ids = self._job(body)
        slot = self.service.admit()
        try:
            async for chunk in self.service.stream(job, ids):
                yield chunk
        finally:
            slot.release()

    def end_program(self, program_id: str) -> bool:
        return self.service.tracker.end(program_id)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.engine.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


class ChatAgentrt(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "smollm2-135m"
    base_url: str | None = None           # an `agentrt serve` URL (…/v1); None: an engine in this process
    api_key: str = "none"
    policy: str | None = "agentrt"        # in-process only (a server has its own)
    engine_config: dict[str, Any] = {}    # in-process: EngineConfig fields
    engine: Any = None                    # in-process: an AsyncLLMEngine of your own
    temperature: float = 0.0
    max_tokens: int | None = 256
    seed: int | None = None
    stop: list[str] | None = None
    program_id: str | None = None         # default: LangGraph's thread_id
    program_graph: dict[str, Any] | None = None
    _backend: Any = PrivateAttr(default=None)
    _clients: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "agentrt"

    # ---------------------------------------------------------------- LangChain API
    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | dict | None = None, **kwargs):
        formatted = [convert_to_openai_tool(t) for t in tools]
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required", "any"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        if tool_choice == "any":
            tool_choice = "required"
        extra = {"tool_choice": tool_choice} if tool_choice is not None else {}
        return self.bind(tools=formatted, **extra, **kwargs)

    def use_graph(self, compiled) -> "ChatAgentrt":
        """Tell agentrt the LangGraph graph this model runs in (its node graph goes with each
        program's requests: steps-to-execution for kvflow / agentrt)."""
        self.program_graph = langgraph_program_graph(compiled).spec()
        return self

    def end_program(self, program_id: str) -> None:
        """End a program now (else it ends after the server's idle timeout)."""
        if self.base_url is None:
            self._in_process().end_program(program_id)
        else:
            import httpx
            httpx.post(f"{self.base_url.rstrip('/')}/programs/{program_id}/end",
                       headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # ---------------------------------------------------------------- requests
    def _body(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": convert_to_openai_messages(messages),
                                "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        if stop or self.stop:
            body["stop"] = list(stop or self.stop)
        body.update({k: v for k, v in kwargs.items() if v is not None})
        config = ensure_config()
        metadata, configurable = config.get("metadata") or {}, config.get("configurable") or {}
        pid = self.program_id or configurable.get("thread_id") or metadata.get("thread_id")
        if pid is not None:
            body["program_id"] = str(pid)
            agent = metadata.get("langgraph_node")
            if agent:
                body["agent_id"] = str(agent)
            if self.program_graph is not None:
                body["program_graph"] = self.program_graph
        return body

    def _in_process(self) -> _InProcess:
        if self._backend is None:
            self._backend = _InProcess(self.model, self.policy, self.engine_config, self.engine)
        return self._backend

    def _openai(self, asynchronous: bool):
        import openai
        if self._clients is None:
            self._clients = (openai.OpenAI(base_url=self.base_url, api_key=self.api_key),
                             openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key))
        return self._clients[asynchronous]

    @staticmethod
    def _split(body: dict) -> tuple[dict, dict]:
        """OpenAI client arguments and agentrt's fields (sent as extra_body)."""
        ours = {k: body.pop(k) for k in ("program_id", "agent_id", "program_graph", "is_last_step") if k in body}
        return body, ours

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        body = self._body(messages, stop, kwargs)
        if self.base_url is None:
            return _result(self._in_process().chat(body))
        args, extra = self._split(body)
        return _result(self._openai(False).chat.completions.create(**args, extra_body=extra).model_dump())

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        body = self._body(messages, stop, kwargs)
        if self.base_url is None:
            return _result(await self._in_process().achat(body))
        args, extra = self._split(body)
        return _result((await self._openai(True).chat.completions.create(**args, extra_body=extra)).model_dump())

    def _stream(self, messages, stop=None, run_manager=None, **kwargs) -> Iterator[ChatGenerationChunk]:
        body = {**self._body(messages, stop, kwargs), "stream": True, "stream_options": {"include_usage": True}}
        if self.base_url is None:
            chunks = self._in_process().stream(body)
        else:
            args, extra = self._split(body)
            chunks = (c.model_dump() for c in self._openai(False).chat.completions.create(**args, extra_body=extra))
        for chunk in chunks:
            gen = _chunk(chunk)
            if run_manager and gen.text:
                run_manager.on_llm_new_token(gen.text, chunk=gen)
            yield gen

    async def _astream(self, messages, stop=None, run_manager=None, **kwargs) -> AsyncIterator[ChatGenerationChunk]:
        body = {**self._body(messages, stop, kwargs), "stream": True, "stream_options": {"include_usage": True}}
        if self.base_url is None:
            chunks = self._in_process().astream(body)
        else:
            args, extra = self._split(body)
            chunks = _dumped(await self._openai(True).chat.completions.create(**args, extra_body=extra))
        async for chunk in chunks:
            gen = _chunk(chunk)
            if run_manager and gen.text:
                await run_manager.on_llm_new_token(gen.text, chunk=gen)
            yield gen


async def _dumped(stream) -> AsyncIterator[dict]:
    async for c in stream:
        yield c.model_dump()


def _usage(u: dict | None) -> dict | None:
    if not u:
        return None
    return {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
            "total_tokens": u["total_tokens"],
            "input_token_details": {"cache_read": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0}}


def _result(resp: dict) -> ChatResult:
    import json
    choice = resp["choices"][0]
    msg = choice["message"]
    calls = [{"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"] or "{}"), "id": c["id"],
              "type": "tool_call"} for c in msg.get("tool_calls") or []]
    message = AIMessage(content=msg.get("content") or "", tool_calls=calls, usage_metadata=_usage(resp.get("usage")),
                        response_metadata={"finish_reason": choice["finish_reason"], "model_name": resp["model"]},
                        id=resp["id"])
    return ChatResult(generations=[ChatGeneration(message=message)])


def _chunk(chunk: dict) -> ChatGenerationChunk:
    if not chunk["choices"]:
        return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=_usage(chunk.get("usage"))))
    choice = chunk["choices"][0]
    delta = choice.get("delta") or {}
    calls = [{"name": (c.get("function") or {}).get("name"), "args": (c.get("function") or {}).get("arguments"),
              "id": c.get("id"), "index": c.get("index", 0), "type": "tool_call_chunk"}
             for c in delta.get("tool_calls") or []]
    meta = {"finish_reason": choice["finish_reason"]} if choice.get("finish_reason") else {}
    return ChatGenerationChunk(message=AIMessageChunk(content=delta.get("content") or "", tool_call_chunks=calls,
                                                      response_metadata=meta, id=chunk["id"]))
