"""The worker side: serve `@tool` functions to any agentrt runtime on the broker.

    worker = Worker([search, run_python], "mqtt://127.0.0.1:1883", concurrency=4)
    await worker.serve(stop_event)          # `agentrt worker TARGET --broker ...` does this

A worker advertises its tools on a retained topic (its MQTT will empties it if the worker dies),
takes calls from a shared subscription (workers of one group share the load), acknowledges each
call, sends heartbeats while it runs and passes on the tool's own progress reports
(`report_progress`), and answers with the result or the error's type and message. A call id seen
twice (a QoS 1 redelivery) runs once and is answered once; a call resent after a reconnect gets
its cached answer again. It reconnects after a broker restart and sends the answers it could not
send meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import uuid4

from agentrt.tools.context import CallInfo, CallSite, reset_call, reset_site, set_call, set_site
from agentrt.tools.mqtt.broker import BrokerURL, require_aiomqtt
from agentrt.tools.mqtt.protocol import (DEFAULT_GROUP, MAX_PAYLOAD, CallRequest, Cancel, ProtocolError, Reply,
                                         Topics, ToolSpec, WorkerAdvert, decode, encode)
from agentrt.tools.spec import Tool, ToolArgumentError, ToolTimeoutError

log = logging.getLogger("agentrt.worker")
REMEMBER_CALLS = 4096               # answered call ids kept for dedupe
REMEMBER_BYTES = 64 << 20


def properties(correlation: bytes | None = None, response_topic: str | None = None):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    return props


@dataclass(slots=True)
class _Running:
    request: CallRequest
    response_topic: str
    correlation: bytes
    task: asyncio.Task | None = None


class Worker:
    """Serves `tools` on `broker` until `serve`'s stop event is set. `stats` counts calls,
    duplicates, malformed payloads, cancels and reconnects."""

    def __init__(self, tools: Iterable[Tool], broker: str | BrokerURL, *, worker_id: str | None = None,
                 group: str = DEFAULT_GROUP, concurrency: int = 4, heartbeat: float = 0.5,
                 max_payload: int = MAX_PAYLOAD, protection: str = "", drain_seconds: float = 5.0):
        require_aiomqtt()
        self.tools = {t.name: t for t in tools}
        if not self.tools:
            raise ValueError("a worker needs at least one tool")
        self.url = BrokerURL.parse(broker)
        self.topics = Topics(self.url.prefix)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:6]}"
        self.group, self.concurrency, self.heartbeat = group, max(1, int(concurrency)), heartbeat
        self.max_payload, self.protection, self.drain_seconds = max_payload, protection, drain_seconds
        self.stats: Counter = Counter()
        self._running: dict[str, _Running] = {}
        self._done: OrderedDict[str, tuple[str, bytes, bytes]] = OrderedDict()
        self._done_bytes = 0
        self._outbox: list[tuple[str, bytes, bytes]] = []
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self.connected = asyncio.Event()

    def advert(self) -> WorkerAdvert:
        specs = [ToolSpec(**t.schema(), expected_duration=t.expected_duration, timeout=t.timeout,
                          retries=t.retries, idempotent=t.idempotent) for t in self.tools.values()]
        return WorkerAdvert(worker=self.id, group=self.group, tools=specs, concurrency=self.concurrency,
                            heartbeat=self.heartbeat, protection=self.protection, pid=os.getpid(),
                            host=socket.gethostname(), started=time.time())

    # ------------------------------------------------------------------ connection
    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (then finish running calls for up to drain_seconds, withdraw
        the advert and disconnect). Reconnects, with backoff, whenever the broker goes away."""
        import aiomqtt
        self._loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self.concurrency)
        stop = stop or asyncio.Event()
        beats = asyncio.create_task(self._heartbeats())
        backoff = 0.05
        try:
            while not stop.is_set():
                try:
                    await self._session(stop, aiomqtt)
                    return
                except aiomqtt.MqttError as exc:
                    self._client = None
                    self.connected.clear()
                    self.stats["disconnects"] += 1
                    log.warning("worker %s: broker %s: %s; reconnecting", self.id, self.url, exc)
                    try:
                        await asyncio.wait_for(stop.wait(), backoff)
                    except TimeoutError:
                        pass
                    backoff = min(backoff * 2, 1.0)
        finally:
            beats.cancel()
            for run in list(self._running.values()):
                if run.task is not None:
                    run.task.cancel()

    async def _session(self, stop: asyncio.Event, aiomqtt) -> None:
        advert_topic = self.topics.advert(self.id)
        will = aiomqtt.Will(advert_topic, b"", qos=1, retain=True)
        async with self.url.client(identifier=self.id, will=will, clean_start=True) as client:
            for name in self.tools:
                await client.subscribe(self.topics.shared_call(self.group, name), qos=1)
            await client.subscribe(self.topics.direct(self.id), qos=1)
            await client.subscribe(self.topics.cancel, qos=1)
            await client.publish(advert_topic, encode(self.advert()), qos=1, retain=True)
            self._client = client
            self.stats["connects"] += 1
            self.connected.set()
            outbox, self._outbox = self._outbox, []
            for topic, corr, payload in outbox:
                await self._publish(topic, corr, payload)
            reader = asyncio.create_task(self._read(client))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                stopper.cancel()
                reader.result()                          # the MqttError that ended the session
                raise aiomqtt.MqttError("message stream ended")
            await self._drain()
            reader.cancel()
            await client.publish(advert_topic, b"", qos=1, retain=True, timeout=2.0)
            self._client = None

    async def _drain(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.drain_seconds)

    async def _read(self, client) -> None:
        async for message in client.messages:
            try:
                self._on_message(message)
            except Exception:                            # a bug here must not stop the worker
                log.exception("worker %s: handling a message failed", self.id)
                self.stats["handler_errors"] += 1

    async def _publish(self, topic: str, correlation: bytes, payload: bytes, *, qos: int = 1,
                       keep: bool = True) -> None:
        """Send a reply; while disconnected, results (`keep`) wait in the outbox."""
        import aiomqtt
        client = self._client
        if client is None:
            if keep:
                self._outbox.append((topic, correlation, payload))
            return
        try:
            await client.publish(topic, payload, qos=qos, properties=properties(correlation), timeout=5.0)
        except (aiomqtt.MqttError, TimeoutError):
            if keep:
                self._outbox.append((topic, correlation, payload))

    def _reply(self, run: _Running | tuple[str, bytes], reply: Reply, *, qos: int = 1, keep: bool = True) -> None:
        topic, corr = (run.response_topic, run.correlation) if isinstance(run, _Running) else run
        asyncio.ensure_future(self._publish(topic, corr, encode(reply), qos=qos, keep=keep))

    # ------------------------------------------------------------------ messages
    def _on_message(self, message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else \
            str(message.payload or "").encode()
        if topic == self.topics.cancel:
            try:
                cancel = decode(Cancel, payload, 4096)
            except ProtocolError:
                return
            run = self._running.get(cancel.id)
            if run is not None and run.task is not None:
                self.stats["cancelled"] += 1
                run.task.cancel()
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            request = decode(CallRequest, payload, self.max_payload)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            if response_topic:
                cid = (correlation or b"?").decode(errors="replace")
                self._reply((response_topic, correlation or b""), Reply(
                    id=cid, kind="result", worker=self.id, ok=False, error_type="ProtocolError",
                    error_message=f"worker {self.id} refused the call: {exc}"))
            return
        response_topic = response_topic or self.topics.reply(request.caller)
        correlation = correlation or request.id.encode()
        self._on_call(request, response_topic, correlation)

    def _on_call(self, request: CallRequest, response_topic: str, correlation: bytes) -> None:
        target = (response_topic, correlation)
        if request.id in self._running:                  # redelivered while it runs
            self.stats["duplicates"] += 1
            if request.resend:
                self._reply(target, Reply(id=request.id, kind="accepted", worker=self.id), keep=False)
            return
        if request.id in self._done:                     # already answered
            self.stats["duplicates"] += 1
            if request.resend:
                topic, corr, payload = self._done[request.id]
                asyncio.ensure_future(self._publish(response_topic, correlation, payload))
            return
        tool = self.tools.get(request.tool)
        if tool is None:
            return self._answer(request, target, _error("LookupError", f"worker {self.id} has no tool "
                                                                       f"{request.tool!r} (it serves {', '.join(self.tools)})"))
        if request.deadline is not None and time.time() > request.deadline:
            return self._answer(request, target, _error("TimeoutError", "the call's deadline passed before "
                                                                        f"worker {self.id} received it"))
        run = _Running(request, response_topic, correlation)
        self._running[request.id] = run
        self.stats["calls"] += 1
        self._reply(run, Reply(id=request.id, kind="accepted", worker=self.id), keep=False)
        run.task = asyncio.ensure_future(self._serve_call(tool, run))

    def _answer(self, request: CallRequest, target: tuple[str, bytes], reply: Reply) -> None:
        reply.id, reply.worker = request.id, self.id
        payload = encode(reply)
        if len(payload) > self.max_payload:
            payload = encode(_error("ProtocolError", f"the result of {request.tool} takes {len(payload)} bytes, "
                                                     f"over the {self.max_payload}-byte limit")
                             .model_copy(update={"id": request.id, "worker": self.id}))
        self._done[request.id] = (target[0], target[1], payload)
        self._done_bytes += len(payload)
        while len(self._done) > REMEMBER_CALLS or self._done_bytes > REMEMBER_BYTES:
            _, (_, _, old) = self._done.popitem(last=False)
            self._done_bytes -= len(old)
        asyncio.ensure_future(self._publish(target[0], target[1], payload))

    async def _serve_call(self, tool: Tool, run: _Running) -> None:
        request = run.request
        try:
            async with self._sem:
                reply = await self._execute(tool, request)
        except asyncio.CancelledError:
            self._running.pop(request.id, None)
            raise
        self._running.pop(request.id, None)
        self._answer(request, (run.response_topic, run.correlation), reply)

    async def _execute(self, tool: Tool, request: CallRequest) -> Reply:
        loop = self._loop
        site = CallSite(request.program, request.step, request.tool,
                        lambda f, e, m: loop.call_soon_threadsafe(self._progress, request.id, f, e, m),
                        request.caller)
        site_token, call_token = set_site(site), set_call(CallInfo(request.key, 1, request.attempt))
        began = time.monotonic()
        try:
            model = tool.validate(request.arguments)
            args = [getattr(model, p.field) for p in tool.params if p.positional_only]
            kwargs = {p.name: getattr(model, p.field) for p in tool.params if not p.positional_only}
            limit = tool.timeout if tool.timeout is not None else math.inf
            if request.deadline is not None:
                limit = min(limit, max(request.deadline - time.time(), 0.0))
            try:
                async with asyncio.timeout(None if math.isinf(limit) else limit):
                    value = await tool._invoke(args, kwargs)
            except TimeoutError:
                raise ToolTimeoutError(tool.name, round(limit, 3)) from None
        except ToolArgumentError as exc:
            return _error("ToolArgumentError", str(exc))
        except Exception as exc:
            self.stats["errors"] += 1
            tb = "".join(traceback.format_exception(exc)[-3:])[-1500:]
            return _error(type(exc).__name__, str(exc), traceback=tb, duration=time.monotonic() - began)
        finally:
            reset_call(call_token)
            reset_site(site_token)
        return Reply(id=request.id, kind="result", ok=True, value=value, duration=time.monotonic() - began)

    def _progress(self, call_id: str, fraction, eta_seconds, message) -> None:
        run = self._running.get(call_id)
        if run is not None:
            self._reply(run, Reply(id=call_id, kind="progress", worker=self.id, fraction=fraction,
                                   eta_seconds=eta_seconds, message=message), qos=0, keep=False)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            for run in list(self._running.values()):
                self._reply(run, Reply(id=run.request.id, kind="heartbeat", worker=self.id), qos=0, keep=False)


def _error(kind: str, message: str, *, traceback: str | None = None, duration: float | None = None) -> Reply:
    return Reply(id="", kind="result", ok=False, error_type=kind, error_message=message,
                 message=traceback, duration=duration)
