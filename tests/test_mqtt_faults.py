"""Faults against the real broker: a worker killed mid-call, the broker restarted mid-call, a
program cancelled while its remote call runs, no worker at all."""
from __future__ import annotations

import asyncio
import os
import signal
import time

from pydantic import BaseModel

import mqtt_tools as mt
from mqtt_helpers import broker, fleet, remote  # noqa: F401  (fixtures)
from runtime_helpers import Recorder, ScriptedEngine, arun
from agentrt import Runtime, Workflow


class Job(BaseModel):
    seconds: float = 2.0
    tag: str = "job"
    mark_dir: str = ""
    out: str = ""


def job_workflow(tool) -> Workflow:
    wf = Workflow("job", Job, output="out")
    wf.tool("work", tool, {"seconds": lambda s: s.seconds, "tag": "{tag}", "mark_dir": "{mark_dir}"}, output="out")
    return wf


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)
    return value


def test_a_worker_killed_mid_call_is_retried_on_another_and_the_program_completes(fleet, remote, tmp_path):
    procs = {name: fleet.process(name) for name in ("w-a", "w-b")}
    remote.wait_for_workers("slow", 2, wait=30)
    slow = remote.tool("slow")                                       # retries=2, as the worker advertises
    rec = Recorder()
    marks = tmp_path

    async def main():
        async with Runtime(ScriptedEngine(["-"]), on_event=[rec]) as rt:
            program = rt.submit(job_workflow(slow), {"seconds": 1.5, "tag": "k", "mark_dir": str(marks)})
            loop = asyncio.get_running_loop()
            started = await loop.run_in_executor(None, wait_for, lambda: (marks / "k.started").exists(), 10,
                                                 "the call to start on a worker")
            assert started
            holder = await loop.run_in_executor(None, wait_for, lambda: next(
                (w for w in remote.in_flight().values() if w), None), 5, "the call's worker")
            killed_at = time.monotonic()
            os.kill(procs[holder].pid, signal.SIGKILL)               # mid-call, no goodbye
            result = await program.result()
            return holder, killed_at, result
    holder, killed_at, result = arun(main())
    assert result.status == "done", result.error
    assert result.output == "slept 1.5 s (k)"
    retries = rec.of("tool_retry")
    assert len(retries) == 1 and "WorkerLostError" in retries[0].data["error"] and holder in retries[0].data["error"]
    assert rec.of("tool_end")[0].data["attempts"] == 2
    assert time.monotonic() - killed_at < 1.5 + 3.0                  # noticed fast, not after the 30 s timeout
    survivor = "w-b" if holder == "w-a" else "w-a"
    assert procs[survivor].poll() is None and procs[holder].poll() == -signal.SIGKILL
    assert remote.workers("slow") == [survivor]                      # the dead worker's will emptied its advert


def test_the_broker_restarted_mid_call_loses_no_call(broker, fleet, remote):
    w = fleet.thread([mt.slow])
    slow = remote.tool("slow", retries=0)                            # no retry: the calls themselves survive

    async def main():
        calls = [asyncio.ensure_future(slow.run({"seconds": 1.0, "tag": f"r{i}"})) for i in range(4)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(broker.restart)                      # same port, nothing persisted
        return await asyncio.gather(*calls)
    results = arun(main())
    assert [r.ok for r in results] == [True] * 4, [r.error for r in results]
    assert sorted(r.value for r in results) == [f"slept 1.0 s (r{i})" for i in range(4)]
    assert remote.stats["disconnects"] >= 1 and remote.stats["connects"] >= 2 and remote.stats["resent"] >= 4
    assert w.worker.stats["disconnects"] >= 1 and w.worker.stats["connects"] >= 2
    assert w.worker.stats["calls"] == 4                              # each ran once: resends went to their worker
    assert arun(remote.tool("slow").run({"seconds": 0.01})).ok       # and the advert is back


def test_cancelling_a_program_cancels_its_remote_call(fleet, remote):
    w = fleet.thread([mt.slow])
    slow = remote.tool("slow")
    rec = Recorder()

    async def main():
        async with Runtime(ScriptedEngine(["-"]), on_event=[rec]) as rt:
            program = rt.submit(job_workflow(slow), {"seconds": 20.0, "tag": "c"})
            async with asyncio.timeout(5):
                while not w.worker._running:
                    await asyncio.sleep(0.02)
            assert rt.cancel(program.id)
            return await program.result()
    result = arun(main())
    assert result.status == "cancelled"
    wait_for(lambda: "c" in mt.CANCELLED, 3, "the worker to cancel the call")
    assert w.worker.stats["cancelled"] == 1 and not w.worker._running and remote.stats["cancels"] == 1


def test_no_worker_for_a_call_is_a_fast_error(fleet, remote):
    w = fleet.thread([mt.add])
    add = remote.tool("add", retries=0)
    w.stop()                                                         # its advert is withdrawn
    began = time.monotonic()
    result = arun(add.run({"a": 1}))
    assert not result.ok and "no worker took the call to add" in result.error
    assert time.monotonic() - began < remote.accept_timeout + 1.0
