"""The caller's side: tools that run on workers, built from what the workers advertise.

    remote = RemoteTools("mqtt://127.0.0.1:1883")      # connects (its own thread), reads the adverts
    search = remote.tool("search", retries=2)           # a Tool like any other: wf.tool(...), Agent(tools=[...])
    ...
    remote.close()

A call is an MQTT v5 request (QoS 1, response topic + correlation data = its call id, a deadline,
the durable run's idempotency key). It fails fast, as an ordinary tool error the tool's retry
policy handles, when no worker accepts it, when its worker goes silent (missed heartbeats) or
disappears (its will empties its advert), or when a payload is malformed or too large; the
worker's exception comes back with its type and message. After a broker restart the client
reconnects and sends its calls in flight again (to the worker that had them); none is lost.
Cancelling the awaiting task cancels the call on the worker.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from agentrt.tools.context import current_call, current_site
from agentrt.tools.mqtt.broker import BrokerURL, require_aiomqtt
from agentrt.tools.mqtt.protocol import (MAX_PAYLOAD, CallRequest, Cancel, ProtocolError, Reply, Topics, ToolSpec,
                                         WorkerAdvert, decode, encode)
from agentrt.tools.mqtt.worker import properties
from agentrt.tools.spec import Tool, ToolError

log = logging.getLogger("agentrt.remote")
WILL_GRACE = 0.3               # seconds a worker's will waits before its calls count as lost
_UNSET: Any = object()


class RemoteError(ToolError):
    """A remote call that did not give a result: no worker, a lost worker, a bad payload."""


class NoWorkerError(RemoteError):
    pass


class WorkerLostError(RemoteError):
    pass


class PayloadError(RemoteError):
    pass


class RemoteToolError(ToolError):
    """The tool raised on the worker. Its subclass is named after the worker's exception class, so
    an error observation reads `search raised ValueError: ...`."""

    def __init__(self, message: str, *, remote_type: str, worker: str, remote_traceback: str | None = None):
        super().__init__(message)
        self.remote_type, self.worker, self.remote_traceback = remote_type, worker, remote_traceback


_ERROR_CLASSES: dict[str, type[RemoteToolError]] = {}


def remote_error(reply: Reply) -> RemoteToolError:
    kind = reply.error_type or "RemoteToolError"
    if not kind.isidentifier():
        kind = "RemoteToolError"
    cls = _ERROR_CLASSES.get(kind)
    if cls is None:
        cls = _ERROR_CLASSES[kind] = type(kind, (RemoteToolError,), {"__module__": "agentrt.remote"})
    return cls(reply.error_message or "", remote_type=kind, worker=reply.worker, remote_traceback=reply.message)


@dataclass(slots=True)
class _Pending:
    request: CallRequest
    future: asyncio.Future
    progress: Any = None
    sent: float = 0.0
    last_seen: float = 0.0
    worker: str | None = None
    extra: dict = field(default_factory=dict)


class RemoteTools:
    """A connection to a broker's tool workers. `tool(name)` waits (up to `wait` s) for a worker
    that advertises it. `accept_timeout`: seconds a call may wait for a worker to take it;
    `heartbeat_misses`: heartbeats a running call may miss before it counts as lost."""

    def __init__(self, broker: str | BrokerURL, *, client_id: str | None = None, accept_timeout: float = 3.0,
                 heartbeat_misses: int = 4, max_payload: int = MAX_PAYLOAD, connect_timeout: float = 10.0):
        require_aiomqtt()
        self.url = BrokerURL.parse(broker)
        self.topics = Topics(self.url.prefix)
        self.client_id = client_id or f"agentrt-{uuid4().hex[:12]}"
        self.accept_timeout, self.heartbeat_misses, self.max_payload = accept_timeout, heartbeat_misses, max_payload
        self.adverts: dict[str, WorkerAdvert] = {}
        self.stats: Counter = Counter()
        self._pending: dict[str, _Pending] = {}
        self._gone: dict[str, float] = {}           # worker -> when its will emptied its advert
        self._connected_at = 0.0
        self._client = None
        self._changed = threading.Condition()
        self._connected = threading.Event()
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._main: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run_loop, name=f"agentrt-remote-{self.client_id}", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise ConnectionError(f"cannot reach the MQTT broker at {self.url} within {connect_timeout} s "
                                  f"(is mosquitto running? see the README's 'Remote tools' section)")

    # ------------------------------------------------------------------ tools
    def tool(self, name: str, *, wait: float = 10.0, timeout: float | None = _UNSET, retries: int | None = None,
             expected_duration: float | None = _UNSET) -> Tool:
        """A Tool for the remote tool `name`, from its advertised schema and settings (override
        timeout / retries / expected_duration here). LookupError when no worker offers it in time."""
        spec = self._wait_spec(name, wait)
        settings: dict = {}
        tool = Tool.from_schema(spec.model_dump(), self._stub(name, settings),
                                expected_duration=spec.expected_duration if expected_duration is _UNSET else expected_duration,
                                timeout=spec.timeout if timeout is _UNSET else timeout,
                                retries=spec.retries if retries is None else retries, idempotent=spec.idempotent)
        settings["timeout"] = tool.timeout         # the call's deadline: one attempt's timeout from now
        return tool

    def tools(self, names: list[str] | None = None, *, wait: float = 10.0, **settings: Any) -> list[Tool]:
        """Tools for `names` (default: every tool advertised now)."""
        if names is None:
            with self._changed:
                names = sorted({t.name for a in self.adverts.values() for t in a.tools})
        return [self.tool(n, wait=wait, **settings) for n in names]

    def in_flight(self) -> dict[str, str | None]:
        """Calls in flight now: call id -> the worker that accepted it (None: not yet taken)."""
        return {cid: p.worker for cid, p in list(self._pending.items()) if not p.future.done()}

    def workers(self, tool: str | None = None) -> list[str]:
        with self._changed:
            return sorted(w for w, a in self.adverts.items() if tool is None or any(t.name == tool for t in a.tools))

    def wait_for_workers(self, tool: str, count: int, wait: float = 10.0) -> list[str]:
        deadline = time.monotonic() + wait
        with self._changed:
            while len(found := self.workers_locked(tool)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LookupError(f"{len(found)} of {count} workers for {tool!r} on {self.url} after {wait} s")
                self._changed.wait(left)
            return found

    def workers_locked(self, tool: str) -> list[str]:
        return sorted(w for w, a in self.adverts.items() if any(t.name == tool for t in a.tools))

    def _wait_spec(self, name: str, wait: float) -> ToolSpec:
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                for advert in self.adverts.values():
                    for spec in advert.tools:
                        if spec.name == name:
                            return spec
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({t.name for a in self.adverts.values() for t in a.tools})
                    raise LookupError(f"no worker on {self.url} offers tool {name!r} (after {wait} s; offered: "
                                      f"{', '.join(seen) or 'nothing'}); start one: agentrt worker FILE.py --broker {self.url}")
                self._changed.wait(left)

    def _stub(self, name: str, settings: dict):
        remote = self

        async def remote_call(**arguments: Any) -> Any:
            info, site = current_call(), current_site()
            progress = None
            if site.progress is not None:
                hook, caller_loop = site.progress, asyncio.get_running_loop()

                def progress(f, e, m):
                    caller_loop.call_soon_threadsafe(hook, f, e, m)
            limit = settings.get("timeout")
            deadline = time.time() + limit if limit else None
            future = asyncio.run_coroutine_threadsafe(
                remote._call(name, arguments, info, site, progress, deadline), remote._loop)
            return await asyncio.wrap_future(future)

        remote_call.__name__ = name
        return remote_call

    # ------------------------------------------------------------------ calls (client thread)
    async def _call(self, name: str, arguments: dict, info, site, progress, deadline: float | None) -> Any:
        request = CallRequest(id=uuid4().hex, tool=name, arguments=arguments, key=info.key, attempt=info.attempt,
                              program=site.program, step=site.step, caller=self.client_id, deadline=deadline)
        size = len(encode(request))
        if size > self.max_payload:
            self.stats["oversize"] += 1
            raise PayloadError(f"the call to {name} takes {size} bytes on the wire, over the "
                               f"{self.max_payload}-byte limit; pass smaller arguments")
        pending = _Pending(request, self._loop.create_future(), progress)
        self._pending[request.id] = pending
        self.stats["calls"] += 1
        try:
            await self._send(pending)
            return await pending.future
        except asyncio.CancelledError:
            self.stats["cancels"] += 1
            asyncio.ensure_future(self._publish(self.topics.cancel, encode(Cancel(id=request.id))))
            raise
        finally:
            self._pending.pop(request.id, None)

    async def _send(self, pending: _Pending, *, resend: bool = False) -> None:
        import aiomqtt
        pending.sent = pending.last_seen = time.monotonic()
        request = pending.request
        if resend:
            request = request.model_copy(update={"resend": True})
        topic = self.topics.direct(pending.worker) if resend and pending.worker else self.topics.call(request.tool)
        client = self._client
        if client is None:
            return                                           # sent on reconnect
        props = properties(request.id.encode(), self.topics.reply(self.client_id))
        try:
            await client.publish(topic, encode(request), qos=1, properties=props, timeout=5.0)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.info("remote %s: sending call %s failed (%s); resent on reconnect", self.client_id, request.id, exc)

    async def _publish(self, topic: str, payload: bytes) -> None:
        import aiomqtt
        client = self._client
        if client is not None:
            try:
                await client.publish(topic, payload, qos=1, timeout=5.0)
            except (aiomqtt.MqttError, TimeoutError):
                pass

    def _fail(self, pending: _Pending, exc: BaseException) -> None:
        if not pending.future.done():
            pending.future.set_exception(exc)

    # ------------------------------------------------------------------ messages
    def _on_message(self, message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else \
            str(message.payload or "").encode()
        if topic.startswith(self.topics.root + "/adverts/"):
            return self._on_advert(topic.rsplit("/", 1)[-1], payload)
        props = message.properties
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            reply = decode(Reply, payload, self.max_payload)
        except ProtocolError as exc:
            self.stats["malformed_replies"] += 1
            pending = self._pending.get(corr.decode(errors="replace")) if corr else None
            if pending is not None:
                self._fail(pending, PayloadError(f"the reply to {pending.request.tool} was unusable: {exc}"))
            return
        pending = self._pending.get(corr.decode(errors="replace") if corr else reply.id)
        if pending is None or pending.future.done():
            self.stats["late_replies"] += 1
            return
        pending.last_seen = time.monotonic()
        if reply.worker:
            pending.worker = reply.worker
        if reply.kind == "progress":
            self.stats["progress"] += 1
            if pending.progress is not None:
                pending.progress(reply.fraction, reply.eta_seconds, reply.message)
        elif reply.kind == "result":
            if reply.ok:
                pending.future.set_result(reply.value)
            else:
                pending.future.set_exception(remote_error(reply))

    def _on_advert(self, worker: str, payload: bytes) -> None:
        with self._changed:
            if not payload:
                if self.adverts.pop(worker, None) is not None:
                    # Failed by the watchdog if this connection outlives it a moment: a broker that
                    # shuts down also sends every client's will, then drops us (calls survive that).
                    self._gone[worker] = time.monotonic()
            else:
                try:
                    self.adverts[worker] = decode(WorkerAdvert, payload, max(self.max_payload, MAX_PAYLOAD))
                    self._gone.pop(worker, None)
                except ProtocolError:
                    self.stats["malformed_adverts"] += 1
            self._changed.notify_all()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if self._client is None:
                continue
            now = time.monotonic()
            for pending in list(self._pending.values()):
                if pending.future.done():
                    continue
                name = pending.request.tool
                if pending.worker is None:
                    if now - pending.sent > self.accept_timeout:
                        self._fail(pending, NoWorkerError(
                            f"no worker took the call to {name} within {self.accept_timeout} s "
                            f"(workers for it: {', '.join(self.workers(name)) or 'none'})"))
                    continue
                gone = self._gone.get(pending.worker)
                if gone is not None and self._connected_at < gone < now - WILL_GRACE:
                    self._fail(pending, WorkerLostError(f"worker {pending.worker} went away during the call to {name}"))
                    continue
                advert = self.adverts.get(pending.worker)
                beat = advert.heartbeat if advert is not None else 0.5
                silent = now - pending.last_seen
                if silent > beat * self.heartbeat_misses + 0.25:
                    self._fail(pending, WorkerLostError(f"worker {pending.worker} stopped answering during the "
                                                        f"call to {name} (no heartbeat for {silent:.1f} s)"))

    # ------------------------------------------------------------------ connection (client thread)
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._main = self._loop.create_task(self._connection())
        try:
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        finally:
            for pending in self._pending.values():
                self._fail(pending, RemoteError("the remote tools client was closed"))
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _connection(self) -> None:
        import aiomqtt
        watchdog = asyncio.create_task(self._watchdog())
        backoff = 0.05
        try:
            while not self._closing:
                try:
                    async with self.url.client(identifier=self.client_id, clean_start=True) as client:
                        await client.subscribe(self.topics.reply(self.client_id), qos=1)
                        await client.subscribe(self.topics.adverts, qos=1)
                        self._client = client
                        self._connected_at = time.monotonic()
                        self.stats["connects"] += 1
                        backoff = 0.05
                        for pending in list(self._pending.values()):   # in flight across a reconnect
                            self.stats["resent"] += 1
                            await self._send(pending, resend=True)
                        self._connected.set()
                        async for message in client.messages:
                            self._on_message(message)
                except aiomqtt.MqttError as exc:
                    self._client = None
                    if self._closing:
                        break
                    self.stats["disconnects"] += 1
                    log.info("remote %s: broker %s: %s; reconnecting", self.client_id, self.url, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
        finally:
            self._client = None
            watchdog.cancel()

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 5.0) -> None:
        """Disconnect; calls still in flight fail with RemoteError. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._main is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._main.cancel)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> RemoteTools:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> RemoteTools:
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.close)
