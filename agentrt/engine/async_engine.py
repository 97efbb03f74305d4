"""asyncio front of the engine: submit a request, then await its result or stream its tokens.

One background task drives the engine; each step runs in a single worker thread so the event loop
stays free. Requests and aborts from the loop are handed to that thread through queues and applied
between steps, so the engine's state is only ever touched by one thread. With `inline=True` the
steps run on the event loop itself instead (no thread): what a virtual-time loop needs to drive
the whole stack (see agentrt.clock).

>>> engine = AsyncLLMEngine.from_pretrained("smollm2-135m")
>>> out = await engine.generate("Hello", SamplingParams(max_tokens=16))
>>> async for partial in engine.stream("Hello", SamplingParams(max_tokens=16)):
...     print(partial.text)
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentrt.engine.llm_engine import LLMEngine, Prompt
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta, RequestOutput


class EngineDeadError(RuntimeError):
    """The engine step failed; requests in flight at that moment fail with this error."""


class RequestStream:
    """Outputs of one request as they come (cumulative: each carries all tokens so far)."""

    def __init__(self, request_id: str, *, final_only: bool = False):
        self.request_id = request_id
        self.final_only = final_only        # only the finished output (and errors) wake the reader
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.last: RequestOutput | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        if self.final_only and isinstance(item, RequestOutput) and not item.finished:
            return
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while self.last is None or not self.last.finished:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self.last = item
            yield item

    async def result(self) -> RequestOutput:
        async for _ in self:
            pass
        return self.last


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, inline: bool = False, pace: Callable[[], float] | None = None):
        self.engine = engine
        self.inline = inline
        # inline only: seconds to wait on the loop after each step (a simulated replica's step
        # time, so that replicas sharing one virtual clock step side by side; agentrt.cluster.sim)
        self._pace = pace
        engine.stream_text = True
        self._streams: dict[str, RequestStream] = {}
        self._adds: deque[tuple[str, list[int], SamplingParams, RequestMeta | None]] = deque()
        self._aborts: deque[str] = deque()
        self._ended: deque[str] = deque()          # programs that ended (applied between steps)
        self._executor = None if inline else ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrt-engine")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._ids = itertools.count()
        self._closed = False

    @classmethod
    def from_pretrained(cls, name_or_path: str = "smollm2-135m", **config: Any) -> "AsyncLLMEngine":
        return cls(LLMEngine.from_pretrained(name_or_path, **config))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def clock(self):
        return self.engine.clock

    @property
    def kv_spec(self):
        return self.engine.kv_spec

    def install_policy(self, policy) -> None:
        """LLMEngine.install_policy; call it before the first request."""
        self.engine.install_policy(policy)

    def add_observer(self, observer) -> None:
        """LLMEngine.add_observer; call it before the first request."""
        self.engine.add_observer(observer)

    def end_program(self, program_id: str) -> None:
        """A program ended: the engine forgets it before its next step."""
        self._ended.append(program_id)

    # ---------------------------------------------------------------- public API
    def submit(self, prompt: Prompt, params: SamplingParams | dict | None = None, *,
               meta: RequestMeta | None = None, request_id: str | None = None,
               final_only: bool = False) -> RequestStream:
        """Validate and queue a request (bad input raises here); returns its stream (of the
        finished output alone with `final_only`)."""
        ids, params = self.engine.validate(prompt, params)
        rid = request_id if request_id is not None else f"areq-{next(self._ids)}"
        if rid in self._streams or rid in self.engine.requests:
            raise ValueError(f"request id {rid!r} is already in use")
        stream = self._streams[rid] = RequestStream(rid, final_only=final_only)
        self._adds.append((rid, ids, params, meta))
        self._ensure_running()
        self._wakeup.set()
        return stream

    async def generate(self, prompt: Prompt, params: SamplingParams | dict | None = None, **kw) -> RequestOutput:
        stream = self.submit(prompt, params, final_only=True, **kw)
        try:
            return await stream.result()
        except asyncio.CancelledError:
            self.abort(stream.request_id)
            raise

    async def stream(self, prompt: Prompt, params: SamplingParams | dict | None = None, **kw) -> AsyncIterator[RequestOutput]:
        stream = self.submit(prompt, params, **kw)
        try:
            async for out in stream:
                yield out
        finally:
            if stream.last is None or not stream.last.finished:
                self.abort(stream.request_id)

    def prefetch(self, prompt: Prompt, *, evict: bool = False) -> None:
        """Bring the host-tier blocks of `prompt`'s prefix back to the device ahead of need (see
        LLMEngine.prefetch); planned at the next step, copied beside its compute."""
        self.engine.prefetch(prompt, evict=evict)
        if self._wakeup is not None:
            self._wakeup.set()

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed before the next step."""
        if request_id in self._streams:
            self._aborts.append(request_id)
            if self._wakeup is not None:
                self._wakeup.set()

    async def close(self) -> None:
        """Stop the step loop; requests still queued or running are aborted (their blocks freed)
        and their streams end with CancelledError. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._in_engine(self._abort_all)
        for rid, stream in self._streams.items():
            stream.put(asyncio.CancelledError(f"request {rid} was aborted: the engine closed"))
        self._streams.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _in_engine(self, fn):
        """Run `fn` where the engine's state lives: inline, or on its thread."""
        if self._executor is None:
            result = fn()
            await asyncio.sleep(self._pace() if self._pace is not None else 0)   # let the programs it woke run
            return result
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _abort_all(self) -> None:
        self._adds.clear()
        self._aborts.clear()
        for rid in list(self.engine.requests):
            self.engine.abort(rid)

    # ---------------------------------------------------------------- the step loop
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="agentrt-engine-loop")

    async def _run(self) -> None:
        while True:
            if not (self._adds or self._aborts or self.engine.has_unfinished()):
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs, aborted = await self._in_engine(self._step)
            except Exception as exc:            # fail what was in flight, keep serving new requests
                self._fail_all(exc)
                continue
            for rid in aborted:
                stream = self._streams.pop(rid, None)
                if stream is not None:
                    stream.put(asyncio.CancelledError(f"request {rid} was aborted"))
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue
                stream.put(out)
                if out.finished:
                    del self._streams[out.request_id]

    def _step(self) -> tuple[list[RequestOutput], list[str]]:
        """Runs in the engine thread: apply queued adds and aborts, then one step."""
        while self._adds:
            rid, ids, params, meta = self._adds.popleft()
            self.engine.add_request(ids, params, request_id=rid, meta=meta)
        aborted = []
        while self._aborts:
            rid = self._aborts.popleft()
            self.engine.abort(rid)
            aborted.append(rid)
        while self._ended:
            self.engine.end_program(self._ended.popleft())
        return self.engine.step(), aborted

    def _fail_all(self, exc: Exception) -> None:
        for rid in list(self.engine.requests):
            self.engine.abort(rid)
        self._adds.clear()
        error = EngineDeadError(f"engine step failed: {exc!r}")
        error.__cause__ = exc
        for stream in self._streams.values():
            stream.put(error)
        self._streams.clear()
