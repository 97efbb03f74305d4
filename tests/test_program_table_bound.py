"""The program table stays bounded: finished programs' entries are kept only for the most recently
ended `keep_finished`, live programs are never dropped, and the per-program bookkeeping is gone when
a program ends. Through `agentrt serve` too: programs ended by is_last_step, by POST .../end and by
the idle timeout all leave the table, and the server goes on serving."""
from __future__ import annotations

import time

import httpx
import pytest

from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine
from agentrt.sched.events import (LLMCallEnded, LLMCallStarted, ProgramEnded, ProgramStarted, StepEnded,
                                  StepStarted, ToolEnded, ToolStarted)
from agentrt.sched.program_table import INF, KEEP_FINISHED, ProgramTable
from agentrt.server import ServerThread, create_app
from agentrt.server.graphs import SessionGraph
from server_helpers import ScriptRunner, assert_pool_clean

MODEL = "tiny-random-llama"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def run_program(table: ProgramTable, clock: Clock, pid: str, *, end: bool = True) -> None:
    """A two-turn program with a tool pause between the turns, as a front reports it."""
    graph = SessionGraph()
    graph.saw("agent")
    table.publish(ProgramStarted(pid, clock.t, clock.t, graph=graph))
    for turn in range(2):
        clock.t += 0.01
        table.publish(StepStarted(pid, "agent", clock.t))
        table.publish(LLMCallStarted(pid, f"{pid}-{turn}", "agent", "agent", 40, clock.t))
        table.publish(LLMCallEnded(pid, f"{pid}-{turn}", "agent", "agent", 40, 8, 0, clock.t))
        table.publish(StepEnded(pid, "agent", clock.t))
        if turn == 0:
            table.publish(ToolStarted(pid, "search", "agent", clock.t))
            table.publish(ToolEnded(pid, "search", "agent", clock.t + 0.005, 0.005))
    if end:
        table.publish(ProgramEnded(pid, "done", clock.t))


def test_finished_programs_leave_the_table_past_the_window():
    clock = Clock()
    table = ProgramTable(clock=clock, keep_finished=50)
    run_program(table, clock, "long-lived", end=False)          # live all along: never dropped
    sizes = []
    for i in range(2000):
        run_program(table, clock, f"p{i}")
        sizes.append(len(table.entries))
    assert max(sizes) <= 50 + 1 and len(table.entries) == 51
    assert [p for p in table.entries if p != "long-lived"] == [f"p{i}" for i in range(1950, 2000)]
    assert all(table.entries[f"p{i}"].finished for i in range(1950, 2000))
    assert not table.entries["long-lived"].finished and table.distance("long-lived", "agent") < INF
    assert "p0" not in table.entries and table.distance("p0", "agent") == INF     # as when it was finished
    assert table.eta("p0", "agent", clock.t) == INF and table.eta("p1999", "agent", clock.t) == INF
    assert table.sizes() == {"entries": 51, "finished": 50, "live": 1, "open_tools": 0, "llm_calls": 0}
    assert len(table.predictor.samples("search")) == 256           # what they taught stays (its own window)
    table.publish(ToolStarted("p0", "search", "agent", clock.t))     # late events of dropped programs: no trace
    table.publish(LLMCallEnded("p0", "late", "agent", "agent", 1, 1, 0, clock.t))
    assert "p0" not in table.entries and table.sizes()["open_tools"] == 0


def test_an_id_used_again_is_a_new_program_and_dropping_bumps_the_version():
    clock = Clock()
    table = ProgramTable(clock=clock, keep_finished=2)
    run_program(table, clock, "a")
    run_program(table, clock, "a", end=False)                       # restarted: live again
    assert not table.entries["a"].finished
    version = table.version
    for pid in ("b", "c", "d"):
        run_program(table, clock, pid)
    assert set(table.entries) == {"a", "c", "d"} and table.version > version    # "a" is live, "b" dropped
    table.publish(ProgramEnded("a", "done", clock.t))
    assert set(table.entries) == {"d", "a"}
    assert ProgramTable(keep_finished=0).keep_finished == 0 and KEEP_FINISHED == 10_000
    with pytest.raises(ValueError):
        ProgramTable(keep_finished=-1)


def test_keep_finished_zero_drops_at_the_end():
    clock = Clock()
    table = ProgramTable(clock=clock, keep_finished=0)
    for i in range(100):
        run_program(table, clock, f"p{i}")
    assert table.entries == {} and table.sizes() == {"entries": 0, "finished": 0, "live": 0, "open_tools": 0,
                                                     "llm_calls": 0}


# ------------------------------------------------------------------------------------------ server
@pytest.fixture(scope="module")
def server(tiny_loaded):
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", kv_cache_tokens=4096),
                                      runner=lambda layout: ScriptRunner(layout)))
    app = create_app(engine, model_name=MODEL, policy="agentrt", idle_timeout=0.3)
    app.state.door.table.keep_finished = 20
    with ServerThread(app) as url:
        yield url, engine, app


def test_programs_ended_every_way_leave_the_server_s_table(server):
    url, engine, app = server
    door, tracker = app.state.door, app.state.tracker
    sizes = []
    with httpx.Client(base_url=url, timeout=30) as http:
        def ask(pid: str, **extra) -> None:
            r = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4, "program_id": pid,
                                                         "messages": [{"role": "user", "content": f"go {pid}"}],
                                                         **extra})
            assert r.status_code == 200, r.text
        for i in range(90):
            pid = f"job-{i}"
            ask(pid)
            if i % 3 == 0:
                ask(pid, is_last_step=True)                           # ended by its last step
            elif i % 3 == 1:
                assert http.post(f"/v1/programs/{pid}/end").status_code == 200
            # else: left to the idle timeout
            sizes.append(len(door.table.entries))
        deadline = time.monotonic() + 10
        while tracker.programs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tracker.programs == {}                                  # the idle ones were reaped
        assert len(door.table.entries) == 20 and all(e.finished for e in door.table.entries.values())
        assert max(sizes) <= 20 + 30, sizes                             # at most the idle ones live on top
        assert tracker.ended == tracker.started == 90
        ask("after")                                                    # still serving, programs still tracked
        assert http.get("/v1/programs/after").json()["requests"] == 1
        assert not door.table.entries["after"].finished
        assert "agentrt:programs_ended_total 90.0" in http.get("/metrics").text
    assert_pool_clean(engine)
