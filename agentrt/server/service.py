"""The serving core, without HTTP: OpenAI requests in, OpenAI response bodies and stream chunks out.

The HTTP app (agentrt.server.app) and the in-process LangChain adapter both call it. It bounds
the requests it holds (`max_pending`: past it, 429 with Retry-After; never an unbounded queue),
feeds the program tracker, and measures each request for /metrics.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from agentrt.engine.async_engine import EngineDeadError
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta
from agentrt.server.errors import APIError, invalid
from agentrt.server.programs import ProgramIds, ProgramTracker, tool_of_reply
from agentrt.server.prompting import StreamSplitter, chat_prompt, split_reply
from agentrt.server.schemas import ChatRequest, CompletionRequest
from agentrt.server.tenancy import Tenancy


class Job(NamedTuple):
    kind: str                        # chat | text
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    prefix: str                      # a forced opening of the reply (tool_choice), part of the prompt
    tool_names: frozenset[str]
    echo: str                        # completions with echo: the prompt text, before the reply
    include_usage: bool
    created: int
    cache_salt: str | None = None    # the prefix cache it may share (agentrt.server.tenancy)


class Slot:
    def __init__(self, state: "ServiceState"):
        self._state: ServiceState | None = state

    def release(self) -> None:
        if self._state is not None:
            self._state.pending -= 1
            self._state = None


@dataclass
class ServiceState:
    pending: int = 0                 # requests admitted and not yet answered
    draining: bool = False
    dead: str | None = None          # why the engine died


def usage(job: Job, out) -> dict[str, Any]:
    n_prompt, n_out = len(job.prompt_ids), len(out.token_ids) if out is not None else 0
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens if out is not None else 0}}


class Service:
    def __init__(self, engine, tracker: ProgramTracker, *, model_name: str, max_pending: int = 256,
                 default_max_tokens: int = 1024, tenancy: Tenancy | None = None):
        self.engine, self.tracker, self.model_name = engine, tracker, model_name
        self.tenancy = tenancy if tenancy is not None else Tenancy()
        self.max_pending, self.default_max_tokens = max_pending, default_max_tokens
        self.state = ServiceState()
        self.metrics = None           # ServerMetrics, set by the app
        self.max_model_len = engine.engine.max_model_len

    # ---------------------------------------------------------------- admission
    def admit(self) -> "Slot":
        """Hold one of `max_pending` places (release it when the request is answered), or raise."""
        if self.state.dead:
            raise APIError(503, f"the engine is dead: {self.state.dead}", code="engine_dead")
        if self.state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down", retry_after=5)
        if self.state.pending >= self.max_pending:
            raise APIError(429, f"the server holds {self.state.pending} requests (its limit, --max-pending); "
                                "retry later", code="queue_full", retry_after=1)
        self.state.pending += 1
        return Slot(self.state)

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    # ---------------------------------------------------------------- requests to jobs
    def _max_tokens(self, req, n_prompt: int) -> int:
        room = self.max_model_len - n_prompt
        asked = req.requested_max_tokens
        if room < 1 or (asked is not None and asked > room):
            raise invalid(f"this model's maximum context length is {self.max_model_len} tokens; the request "
                          f"has {n_prompt} prompt tokens" + (f" and asks for {asked} more" if asked else ""),
                          "messages" if isinstance(req, ChatRequest) else "prompt", "context_length_exceeded")
        return asked if asked is not None else min(room, self.default_max_tokens)

    def _params(self, req, n_prompt: int, extra_stop: list[str]) -> SamplingParams:
        fields = req.sampling()
        fields["stop"] = fields["stop"] + [s for s in extra_stop if s not in fields["stop"]]
        fields["max_tokens"] = self._max_tokens(req, n_prompt)
        vocab = self.engine.engine.model_config.vocab_size
        if any(t >= vocab for t in fields.get("stop_token_ids", [])):
            raise invalid(f"stop_token_ids must be below the vocabulary size {vocab}", "stop_token_ids")
        return SamplingParams(**fields)

    def _encode(self, prompt, param: str) -> list[int]:
        try:
            ids, _ = self.engine.engine.validate(prompt)
        except (ValueError, TypeError) as exc:
            code = "context_length_exceeded" if "context holds" in str(exc) else None
            raise invalid(str(exc), param, code) from None
        return ids

    def chat_job(self, req: ChatRequest, tenant: str | None = None) -> Job:
        self.check_model(req.model)
        prompt = chat_prompt(req)
        tok = self.engine.tokenizer
        try:
            text = tok.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:          # a template that refuses the conversation (roles out of order)
            raise invalid(f"the chat template refused these messages: {exc}", "messages") from None
        ids = self._encode(text + prompt.prefix, "messages")
        stops = ["</tool_call>"] if prompt.tool_names else []
        return Job("chat", f"chatcmpl-{uuid.uuid4().hex}", ids, self._params(req, len(ids), stops), prompt.prefix,
                   prompt.tool_names, "", bool(req.stream_options and req.stream_options.include_usage),
                   int(time.time()), self.tenancy.cache_salt(tenant, req.cache_salt))

    def completion_job(self, req: CompletionRequest, tenant: str | None = None) -> Job:
        self.check_model(req.model)
        ids = self._encode(req.prompt, "prompt")
        echo = ""
        if req.echo:
            echo = req.prompt if isinstance(req.prompt, str) else self.engine.tokenizer.decode(ids)
        return Job("text", f"cmpl-{uuid.uuid4().hex}", ids, self._params(req, len(ids), []), "", frozenset(), echo,
                   bool(req.stream_options and req.stream_options.include_usage), int(time.time()),
                   self.tenancy.cache_salt(tenant, req.cache_salt))

    # ---------------------------------------------------------------- running
    async def _outputs(self, job: Job, ids: ProgramIds) -> AsyncIterator[Any]:
        """The engine's cumulative outputs for the job; tracker and metrics are told at the end."""
        meta = self.tracker.begin(ids, job.id, job.prompt_ids)
        if job.cache_salt is not None:
            meta = replace(meta or RequestMeta(), cache_salt=job.cache_salt)
        start = last = time.monotonic()
        out, ok, seen = None, False, 0
        m = self.metrics
        try:
            async for out in self.engine.stream(job.prompt_ids, job.params, meta=meta, request_id=job.id):
                now = time.monotonic()
                if m is not None and len(out.token_ids) > seen:
                    (m.ttft.observe(now - start) if not seen else m.itl.observe(now - last))
                    seen, last = len(out.token_ids), now
                yield out
            ok = out is not None and out.finished
        except EngineDeadError as exc:
            self.state.dead = str(exc)
            raise APIError(503, f"the engine failed: {exc}", code="engine_dead") from None
        except asyncio.CancelledError:
            if self.state.draining:
                raise APIError(503, "the server shut down before the request finished", code="shutting_down")
            raise
        finally:
            tool = None
            if ok:
                reply = split_reply(job.prefix + out.text, job.tool_names)
                tool = tool_of_reply(reply.content, [c["function"]["name"] for c in reply.tool_calls])
                if m is not None:
                    m.e2e.observe(time.monotonic() - start)
                    m.finished(len(job.prompt_ids), out.num_cached_tokens, len(out.token_ids), out.finish_reason)
            self.tracker.finish(ids, job.id, job.prompt_ids, out.token_ids if out is not None else [],
                                out.num_cached_tokens if out is not None else 0, tool)

    async def complete(self, job: Job, ids: ProgramIds) -> dict[str, Any]:
        out = None
        async for out in self._outputs(job, ids):
            pass
        text = job.prefix + out.text
        if job.kind == "text":
            choice = {"index": 0, "text": job.echo + text, "logprobs": None, "finish_reason": out.finish_reason}
            return {"id": job.id, "object": "text_completion", "created": job.created, "model": self.model_name,
                    "choices": [choice], "usage": usage(job, out)}
        reply = split_reply(text, job.tool_names)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        finish = out.finish_reason
        if reply.tool_calls:
            message["tool_calls"], finish = reply.tool_calls, "tool_calls"
        return {"id": job.id, "object": "chat.completion", "created": job.created, "model": self.model_name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage(job, out)}

    def _chunk(self, job: Job, choice: dict | None, with_usage: dict | None = None) -> dict[str, Any]:
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        body = {"id": job.id, "object": obj, "created": job.created, "model": self.model_name,
                "choices": [choice] if choice is not None else []}
        if job.include_usage:
            body["usage"] = with_usage
        return body

    def _delta(self, job: Job, text: str | None = None, finish: str | None = None, **delta) -> dict:
        if job.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    async def stream(self, job: Job, ids: ProgramIds) -> AsyncIterator[dict[str, Any]]:
        """Chunks as the tokens come; content is held back where a stop string or a tool call may
        be starting. The last chunk carries usage when `stream_options.include_usage`."""
        splitter = StreamSplitter(job.tool_names, job.prefix)
        hold = max((len(s) for s in job.params.stop), default=1) - 1
        sent, out = 0, None
        if job.kind == "chat":
            yield self._chunk(job, self._delta(job, role="assistant", content=""))
        elif job.echo:
            yield self._chunk(job, self._delta(job, job.echo))
        async for out in self._outputs(job, ids):
            safe = len(out.text) if out.finished else max(sent, len(out.text) - hold)
            piece, sent = out.text[sent:safe], max(sent, safe)
            piece = splitter.feed(piece) if job.kind == "chat" else piece
            if piece:
                yield self._chunk(job, self._delta(job, piece))
        finish = out.finish_reason
        if job.kind == "chat":
            rest, calls = splitter.finish()
            if rest:
                yield self._chunk(job, self._delta(job, rest))
            if calls:
                finish = "tool_calls"
                yield self._chunk(job, self._delta(job, tool_calls=[{"index": i, **c} for i, c in enumerate(calls)]))
        yield self._chunk(job, self._delta(job, finish=finish))
        if job.include_usage:
            yield self._chunk(job, None, usage(job, out))
