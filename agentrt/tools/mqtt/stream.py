"""The live event stream: every program event, as JSON, under `<prefix>/<run>/<program>/<kind>`.

    Runtime(events="mqtt://127.0.0.1:1883")          # or: agentrt run FLOW.py --events mqtt://...
    agentrt events --broker mqtt://127.0.0.1:1883    # a live table of the programs

`EventStream` is an event sink that never blocks a program: it appends to a bounded buffer and
returns; a thread of its own publishes (QoS 1, a bounded window of messages in flight) and
reconnects when the broker goes away. When the buffer is full the event is dropped and counted
(`stats["dropped"]`), so a slow or absent broker costs a program nothing.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from agentrt.tools.mqtt.broker import BrokerURL, require_aiomqtt

WINDOW = 64                        # QoS 1 publishes in flight at once


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + uuid4().hex[:6]


class EventStream:
    """A sink (`__call__(event)`) for `agentrt.runtime.Event`s. `run_id`: the run's name in the
    topics (a string, or a function asked at each event, e.g. the durable run's id)."""

    def __init__(self, broker: str | BrokerURL, *, run_id: str | Callable[[], str | None] | None = None,
                 maxsize: int = 10_000, qos: int = 1):
        require_aiomqtt()
        self.url = BrokerURL.parse(broker)
        self._run = run_id if run_id is not None else new_run_id()
        self._fallback_run = new_run_id()
        self.maxsize, self.qos = maxsize, qos
        self.stats: Counter = Counter()
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name="agentrt-events", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str:
        run = self._run() if callable(self._run) else self._run
        return run or self._fallback_run

    def topic(self, program: str, kind: str) -> str:
        return f"{self.url.prefix}/{_level(self.run_id)}/{_level(program)}/{_level(kind)}"

    def __call__(self, event) -> None:
        """Buffer one event (microseconds; never waits for the broker)."""
        if self._closing:
            return
        run = self.run_id
        payload = ('{"run": ' + json.dumps(run) + ", " + event.to_json()[1:]).encode()
        item = (f"{self.url.prefix}/{_level(run)}/{_level(event.program)}/{_level(event.event)}", payload)
        with self._lock:
            if len(self._buffer) >= self.maxsize:
                self.stats["dropped"] += 1
                return
            self._buffer.append(item)
            self.stats["queued"] += 1
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:                         # the loop closed meanwhile
            pass

    # ------------------------------------------------------------------ publisher thread
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._publisher())
        except asyncio.CancelledError:                # close() gave up on a broker that never answered
            pass
        finally:
            self._loop.close()

    async def _publisher(self) -> None:
        import aiomqtt
        backoff = 0.05
        while True:
            try:
                async with self.url.client(identifier=f"agentrt-events-{uuid4().hex[:8]}") as client:
                    self.stats["connects"] += 1
                    backoff = 0.05
                    window = asyncio.Semaphore(WINDOW)
                    while True:
                        with self._lock:
                            item = self._buffer.popleft() if self._buffer else None
                        if item is None:
                            if self._closing:
                                await self._settle(window)
                                return
                            self._wake.clear()
                            try:
                                await asyncio.wait_for(self._wake.wait(), 0.1)
                            except TimeoutError:
                                pass
                            continue
                        await window.acquire()
                        asyncio.ensure_future(self._publish_one(client, item, window))
            except aiomqtt.MqttError:
                self.stats["disconnects"] += 1
                if self._closing:
                    with self._lock:
                        self.stats["dropped"] += len(self._buffer)
                        self._buffer.clear()
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _publish_one(self, client, item: tuple[str, bytes], window: asyncio.Semaphore) -> None:
        import aiomqtt
        try:
            await client.publish(item[0], item[1], qos=self.qos, timeout=10.0)
            self.stats["published"] += 1
        except (aiomqtt.MqttError, TimeoutError):
            self.stats["dropped"] += 1
        finally:
            window.release()

    async def _settle(self, window: asyncio.Semaphore) -> None:
        for _ in range(WINDOW):
            await window.acquire()

    def close(self, timeout: float = 3.0) -> None:
        """Publish what is buffered (for up to `timeout` s), then disconnect; what is left is
        counted as dropped."""
        if self._closing:
            return
        self._closing = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():                   # the broker never answered: give up on the rest
            with self._lock:
                self.stats["dropped"] += len(self._buffer)
                self._buffer.clear()
            try:
                self._loop.call_soon_threadsafe(_cancel_all, self._loop)
            except RuntimeError:
                pass
            self._thread.join(1.0)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def _level(text: str) -> str:
    """A topic level: no separators or wildcards inside it."""
    return str(text).replace("/", "_").replace("+", "_").replace("#", "_") or "_"


# ------------------------------------------------------------------------------------ the tail
class EventTable:
    """What `agentrt events` shows: one row per (run, program), updated by each event."""

    def __init__(self):
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.events = 0

    def update(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events += 1
        key = (str(event.get("run", "?")), str(event.get("program", "?")))
        row = self.rows.setdefault(key, {"run": key[0], "program": key[1], "status": "running", "step": "",
                                         "llm_calls": 0, "tool_calls": 0, "tokens_out": 0, "last": "", "t": 0.0})
        kind = event.get("event", "")
        row["last"], row["t"] = kind, float(event.get("t", row["t"]) or 0.0)
        if kind == "step_start":
            row["step"] = event.get("step", "")
        elif kind == "llm_end":
            row["llm_calls"] += 1
            row["tokens_out"] += int(event.get("tokens_out", 0) or 0)
        elif kind == "tool_start":
            row["tool_calls"] += 1
            row["step"] = f"{event.get('step', '')} ({event.get('tool', '')})"
        elif kind == "program_end":
            row["status"] = event.get("status", "ended")
        return row

    def render(self, title: str = "agentrt events"):
        from rich.table import Table
        table = Table(title=f"{title} · {self.events} events")
        for col in ("run", "program", "status", "step", "LLM calls", "tool calls", "tokens out", "last event", "t s"):
            table.add_column(col, justify="right" if col in ("LLM calls", "tool calls", "tokens out", "t s") else "left")
        for row in self.rows.values():
            table.add_row(row["run"], row["program"], row["status"], row["step"], str(row["llm_calls"]),
                          str(row["tool_calls"]), str(row["tokens_out"]), row["last"], f"{row['t']:.2f}")
        return table


async def tail_events(broker: str | BrokerURL, on_event: Callable[[dict[str, Any]], None], *,
                      run: str | None = None, stop: asyncio.Event | None = None,
                      ready: asyncio.Event | None = None) -> None:
    """Subscribe to the event topics (one run, or all) and hand each decoded event to `on_event`
    until `stop` is set; reconnects when the broker goes away."""
    require_aiomqtt()
    import aiomqtt
    url = BrokerURL.parse(broker)
    stop = stop or asyncio.Event()
    pattern = f"{url.prefix}/{_level(run) if run else '+'}/+/+"
    while not stop.is_set():
        try:
            async with url.client(identifier=f"agentrt-tail-{uuid4().hex[:8]}") as client:
                await client.subscribe(pattern, qos=1)
                if ready is not None:
                    ready.set()
                reader = asyncio.ensure_future(_read_events(client, on_event))
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    reader.cancel()
                    return
                stopper.cancel()
                reader.result()
        except aiomqtt.MqttError:
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass


async def _read_events(client, on_event) -> None:
    async for message in client.messages:
        try:
            event = json.loads(message.payload)
        except (TypeError, ValueError):
            continue
        if isinstance(event, dict):
            on_event(event)
