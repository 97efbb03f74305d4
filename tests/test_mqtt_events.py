"""The live event stream: every program event under agentrt/<run>/<program>/<kind> on a real
broker, off the hot path (a dead broker costs a program nothing: bounded buffer, counted drops),
and `agentrt events` tailing it."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

from pydantic import BaseModel

from mqtt_helpers import broker  # noqa: F401  (fixture)
from runtime_helpers import Recorder, ScriptedEngine, arun
from agentrt import Agent, Runtime, Workflow, tool
from agentrt.runtime import Event


class Note(BaseModel):
    topic: str = "bees"
    facts: str = ""
    text: str = ""


@tool(expected_duration=0.01)
async def lookup(topic: str) -> str:
    """Facts."""
    return f"facts about {topic}"


def note_workflow() -> Workflow:
    wf = Workflow("note", Note, output="text")
    wf.tool("look", lookup, {"topic": "{topic}"}, output="facts")
    wf.llm("write", Agent("writer", "You write."), "{facts}", output="text")
    wf.sequence("look", "write")
    return wf


def test_every_program_event_is_published_under_run_program_kind(broker):
    from agentrt.tools.mqtt import tail_events
    got: list[tuple[str, dict]] = []
    rec = Recorder()

    async def main():
        stop, ready = asyncio.Event(), asyncio.Event()
        tail = asyncio.ensure_future(tail_events(broker.url, lambda e: got.append(e), stop=stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 5)
        async with Runtime(ScriptedEngine(["a note"], repeat_last=True), on_event=[rec], events=broker.url) as rt:
            results = await rt.run_many(note_workflow(), [{"topic": "bees"}, {"topic": "ants"}])
            stream = rt._events
        async with asyncio.timeout(5):
            while len(got) < len(rec.events):
                await asyncio.sleep(0.02)
        stop.set()
        await tail
        return results, stream
    results, stream = arun(main())
    assert [r.status for r in results] == ["done", "done"]
    assert stream.stats["published"] == len(rec.events) and stream.stats["dropped"] == 0
    assert len(got) == len(rec.events)
    runs = {e["run"] for e in got}
    assert len(runs) == 1 and next(iter(runs)).startswith("run-")
    for program in (r.program_id for r in results):
        mine = [e for e in got if e["program"] == program]
        assert [e["event"] for e in mine] == rec.kinds(program)      # in order, none missing
        assert mine[-1]["status"] == "done"


class _BlackHole:
    """A TCP port that accepts connections and never answers (a stalled broker)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        try:
            while True:
                self.conns.append(self.sock.accept()[0])
        except OSError:
            pass

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def test_a_stalled_broker_never_stalls_a_program():
    from mqtt_helpers import need_broker_stack
    need_broker_stack()
    from agentrt.tools.mqtt import EventStream
    hole = _BlackHole()
    try:
        stream = EventStream(f"mqtt://127.0.0.1:{hole.port}", run_id="r", maxsize=50)
        worst, first = 0.0, time.perf_counter()
        for i in range(500):
            began = time.perf_counter()
            stream(Event(i * 0.001, "p1", "step_start", {"step": "s"}))
            worst = max(worst, time.perf_counter() - began)
        # a buffer append, not a network wait (the client's connect timeout is 5 s)
        assert worst < 0.05 and time.perf_counter() - first < 0.25
        assert stream.stats["queued"] == 50 and stream.stats["dropped"] == 450
        began = time.monotonic()
        stream.close(timeout=1.0)
        assert time.monotonic() - began < 3.0 and not stream._thread.is_alive()
        assert stream.stats["dropped"] == 500 and stream.stats["published"] == 0

        async def main(events):
            async with Runtime(ScriptedEngine(["a note"], repeat_last=True), events=events) as rt:
                began = time.monotonic()
                results = await rt.run_many(note_workflow(), [{"topic": f"t{i}"} for i in range(5)])
                return time.monotonic() - began, results
        wall, results = arun(main(f"mqtt://127.0.0.1:{hole.port}"))
        assert [r.status for r in results] == ["done"] * 5 and wall < 1.0
    finally:
        hole.close()


def test_agentrt_events_tails_a_run_as_json_lines_and_a_table(broker):
    from agentrt.tools.mqtt import EventStream
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tail = subprocess.Popen([sys.executable, "-m", "agentrt.cli", "events", "--broker", broker.url, "--run", "r1",
                             "--count", "4", "--seconds", "20", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while b"tailing" not in (line := tail.stderr.readline().encode()) and time.monotonic() < deadline:
            pass
        stream = EventStream(broker.url, run_id="r1")
        other = EventStream(broker.url, run_id="r2")                 # another run: not shown
        other(Event(0.0, "x", "program_start", {}))
        for kind, data in (("program_start", {}), ("step_start", {"step": "look"}),
                           ("tool_start", {"step": "look", "tool": "lookup"}), ("program_end", {"status": "done"})):
            stream(Event(0.1, "p7", kind, data))
        stream.close()
        other.close()
        out, _ = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
    assert tail.returncode == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["program_start", "step_start", "tool_start", "program_end"]
    assert {e["run"] for e in events} == {"r1"} and {e["program"] for e in events} == {"p7"}


def test_event_table_rows():
    from agentrt.tools.mqtt import EventTable
    table = EventTable()
    for e in ({"run": "r", "program": "p", "event": "step_start", "step": "write", "t": 0.1},
              {"run": "r", "program": "p", "event": "llm_end", "tokens_out": 12, "t": 0.5},
              {"run": "r", "program": "p", "event": "tool_start", "step": "look", "tool": "lookup", "t": 0.6},
              {"run": "r", "program": "q", "event": "program_end", "status": "failed", "t": 0.7}):
        table.update(e)
    p, q = table.rows["r", "p"], table.rows["r", "q"]
    assert (p["llm_calls"], p["tokens_out"], p["tool_calls"], p["step"], p["status"]) == (1, 12, 1, "look (lookup)", "running")
    assert q["status"] == "failed" and table.events == 4
