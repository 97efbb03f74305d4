"""Durable programs: a run saved at every step survives SIGKILL, SIGTERM and cancels, and resumes
where it stopped without redoing a finished tool call.

The kill test runs tests/durable_worker.py (8 programs, tiny model, greedy, tools whose every
execution is logged with its idempotency key) in a forked child process, kills it with SIGKILL at 22 points
(inside tool calls, inside the fan-out, inside checkpoint writes, at random moments), resumes it
each time, and checks that every program ends in the state of an uninterrupted run, that no tool
call whose result was committed was made again, and that the database stays intact.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from agentrt import Agent, Runtime, Workflow, append, tool
from agentrt.runtime.checkpoint import CheckpointStore
from agentrt.tools import current_call
from runtime_helpers import P

HERE = Path(__file__).resolve().parent
WORKER = HERE / "durable_worker.py"
PYTHON = sys.executable


# ------------------------------------------------------------------------------------------ in-process
class Doc(BaseModel):
    topic: str = "bees"
    plan: str = ""
    facts: str = ""
    items: list[str] = ["x", "y"]
    notes: Annotated[list[str], append] = []
    draft: str = ""


def doc_workflow(made: list, *, gate: asyncio.Event | None = None, idempotent: bool = True, plan_tokens: int = 4,
                 hold: str | None = None):
    """`gate`: lookup waits for it; `hold`: the scan whose idempotency key contains it never returns."""
    @tool(timeout=30, idempotent=idempotent)
    async def lookup(topic: str) -> str:
        """Look facts up (counted)."""
        made.append(("lookup", current_call().key))
        if gate is not None:
            await gate.wait()
        return f"facts on {topic}"

    @tool(timeout=30)
    async def scan(item: str) -> str:
        """Scan one item (counted)."""
        made.append(("scan", current_call().key))
        if hold is not None and hold in current_call().key:
            await asyncio.Event().wait()
        return f"scanned {item}"

    wf = Workflow("doc", Doc, output="draft")
    wf.llm("plan", Agent("planner", params=P(plan_tokens)), "Plan {topic}.", output="plan")
    wf.tool("lookup", lookup, {"topic": "{topic}"}, output="facts")
    wf.python("split", lambda s: None)
    wf.tool("scan", scan, {"item": "{it}"}, output="notes")
    wf.llm("write", Agent("writer", params=P(4)), "Write {plan} {facts} {notes}", output="draft")
    wf.sequence("plan", "lookup", "split")
    wf.fan_out("split", over="items", to="scan", join="write", item="it")
    return wf.compile()


def test_a_cancelled_run_resumes_without_redoing_finished_tool_calls(make_engine, tmp_path):
    db = tmp_path / "runs.db"
    engine = make_engine(kv_cache_tokens=4096)
    made: list = []
    reference = asyncio.run(_plain_run(engine, doc_workflow(made), 2))
    made.clear()
    held = "doc-1/split[1]/scan"                                   # doc-1's second lane hangs in its scan

    async def first_life():
        async with Runtime(engine, checkpoint=db) as rt:
            programs = [rt.submit(doc_workflow(made, hold=held), {"topic": t}) for t in ("bees", "ants")]
            while not any(held in key for _, key in made):
                await asyncio.sleep(0.01)
            programs[1].cancel()                                   # a user cancel, inside the fan-out
            return rt.run_id, [await p.result() for p in programs]

    run_id, results = asyncio.run(first_life())
    assert [r.status for r in results] == ["done", "cancelled"]
    calls_before, committed_first = list(made), set(_done_calls(db, run_id))
    assert f"{run_id}/doc-1/-/lookup#0/0" in committed_first and f"{run_id}/doc-1/split[0]/scan#0/0" in committed_first

    again_results = resumed(engine, db, run_id, doc_workflow(made))
    assert [r.status for r in again_results] == ["done", "done"]
    assert again_results[0].state == results[0].state           # reported as it ended, not rerun
    assert [r.state for r in again_results] == [r.state for r in reference]
    again = made[len(calls_before):]
    assert again == [("scan", f"{run_id}/doc-1/split[1]/scan#0/0")]      # only the call that was in flight
    assert not [key for _, key in again if key in committed_first]          # no committed call made again
    store = CheckpointStore(db)
    assert store.integrity() == "ok" and {p.status for p in store.programs(run_id)} == {"done"}


async def _plain_run(engine, wf, n: int):
    async with Runtime(engine) as rt:
        return await rt.run_many(wf, [{"topic": t} for t in ("bees", "ants")][:n])


def _done_calls(db: Path, run_id: str) -> list[str]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT program_id, call_id FROM tool_calls WHERE run_id = ? AND status = 'done'",
                           (run_id,)).fetchall()
    return [f"{run_id}/{pid}/{cid}" for pid, cid in rows]


def stopped_in_lookup(engine, db: Path, wf) -> str:
    """Run one program of `wf` until its lookup call has started (the gate never opens), cancel it
    there, and return the run's id: a run that stopped with a tool call in flight."""
    async def main():
        async with Runtime(engine, checkpoint=db) as rt:
            program = rt.submit(wf)
            while program.counts["tool_calls"] == 0:
                await asyncio.sleep(0.01)
            program.cancel()
            await program.result()
            return rt.run_id
    return asyncio.run(main())


def resumed(engine, db: Path, run_id: str, wf):
    async def main():
        async with Runtime(engine, checkpoint=db) as rt:
            return await rt.resume(run_id, wf)
    return asyncio.run(main())


def test_resume_refuses_a_changed_workflow_naming_what_changed(make_engine, tmp_path):
    engine, made = make_engine(kv_cache_tokens=4096), []
    run_id = stopped_in_lookup(engine, tmp_path / "runs.db", doc_workflow(made, gate=asyncio.Event()))
    with pytest.raises(ValueError, match=r"workflow 'doc' has changed since run .*: agent 'planner': params changed"):
        resumed(engine, tmp_path / "runs.db", run_id, doc_workflow(made, plan_tokens=9))


def test_a_non_idempotent_call_in_flight_is_not_made_again(make_engine, tmp_path):
    engine, made = make_engine(kv_cache_tokens=4096), []
    run_id = stopped_in_lookup(engine, tmp_path / "runs.db", doc_workflow(made, gate=asyncio.Event(), idempotent=False))
    [result] = resumed(engine, tmp_path / "runs.db", run_id, doc_workflow(made, idempotent=False))
    assert result.status == "failed" and len(made) == 1
    assert f"tool call {run_id}/doc-0/-/lookup#0/0 (lookup) was in flight" in result.error
    assert "not idempotent" in result.error


def test_two_runs_share_one_database(make_engine, tmp_path):
    db = tmp_path / "runs.db"
    made: list = []

    async def one(engine):
        async with Runtime(engine, checkpoint=db) as rt:
            results = await rt.run_many(doc_workflow(made), [{"topic": "a"}, {"topic": "b"}])
            return rt.run_id, results

    async def both():
        return await asyncio.gather(one(make_engine(kv_cache_tokens=4096)), one(make_engine(kv_cache_tokens=4096)))
    (a, ra), (b, rb) = asyncio.run(both())
    assert a != b and all(r.status == "done" for r in ra + rb)
    store = CheckpointStore(db)
    listed = {r["run_id"]: r["programs"] for r in store.runs()}
    assert listed == {a: {"done": 2}, b: {"done": 2}} and store.integrity() == "ok"


def test_a_tool_sees_a_stable_idempotency_key(make_engine, tmp_path):
    made: list = []

    async def main():
        async with Runtime(make_engine(kv_cache_tokens=4096), checkpoint=tmp_path / "r.db", run_id="run-k") as rt:
            await rt.run(doc_workflow(made))
    asyncio.run(main())
    assert ("lookup", "run-k/doc-0/-/lookup#0/0") in made
    assert {k for kind, k in made if kind == "scan"} == {"run-k/doc-0/split[0]/scan#0/0", "run-k/doc-0/split[1]/scan#0/0"}
    assert current_call().key is None                         # outside a call


# ------------------------------------------------------------------------------------------ SIGKILL
class Life:
    """One life of the worker's run: a forked child of this process (torch and the model already
    loaded, so it starts at once), killed with SIGKILL or left to finish."""

    def __init__(self, loaded, folder: Path, mode: str, run_id: str):
        import durable_worker
        self.out = folder / f"out-{time.monotonic_ns()}.json"
        self.pid = durable_worker.fork_worker(str(folder / "runs.db"), str(folder / "calls.log"), mode, run_id,
                                              str(self.out), loaded)
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(status)
        assert self.code == -signal.SIGKILL

    def finish(self, limit: float = 120.0) -> dict:
        deadline = time.monotonic() + limit
        while self.poll() is None:
            assert time.monotonic() < deadline, "the worker did not finish"
            time.sleep(0.02)
        assert self.code == 0, self.out.read_text() if self.out.exists() else f"exit {self.code}"
        return json.loads(self.out.read_text())


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _wait_for(life: Life, log: Path, since: int, marker: str, limit: float = 60.0) -> bool:
    """True once a line starting with `marker` appears after line `since`; False if the life ends."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if any(line.startswith(marker) for line in _lines(log)[since:]):
            return True
        if life.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError(f"no {marker!r} within {limit} s")


KILLS = 22


@pytest.mark.slow
def test_sigkill_at_22_points_then_resume_ends_like_an_uninterrupted_run(tmp_path, tiny_loaded):
    (tmp_path / "ref").mkdir()
    reference = Life(tiny_loaded, tmp_path / "ref", "start", "ref").finish()
    assert len(reference) == 8 and all(status == "done" for status, _ in reference.values())
    rng = random.Random(7)
    kills: list[str] = []
    runs = 0
    while len(kills) < KILLS:                      # a run that ends first: start another
        runs += 1
        kills += _kill_and_resume_until_done(tiny_loaded, tmp_path / f"run{runs}", f"killed-{runs}", reference,
                                             rng, KILLS - len(kills))
    assert {"start fetch", "start probe", "write", "random"} <= set(kills), kills
    print(f"\nSIGKILL at {len(kills)} points over {runs} runs of 8 programs: "
          + ", ".join(f"{kills.count(k)} {k}" for k in ("start fetch", "start probe", "write", "random")))


def _kill_and_resume_until_done(loaded, folder: Path, run_id: str, reference: dict, rng: random.Random,
                                most: int) -> list[str]:
    """Kill one run at up to `most` points (its first fetch, then probes inside the fan-out,
    checkpoint writes and random moments in turn), resuming it after each; let the last life end;
    check it against `reference`. Returns the kill points."""
    folder.mkdir()
    db, log = folder / "runs.db", folder / "calls.log"
    plan = ["start fetch"] + ["start probe", "write", None] * most
    kills, committed_at_kill = [], []
    life = Life(loaded, folder, "start", run_id)
    for marker in plan[:most]:
        since = len(_lines(log))
        if marker is None:
            alive = _wait_for(life, log, since, "")                # anything new: the life is under way
            time.sleep(rng.uniform(0.0, 0.3))
            alive = alive and life.poll() is None
        else:
            alive = _wait_for(life, log, since, marker)
        if not alive:
            break                                                  # it finished before this kill point
        life.kill()
        kills.append(marker or "random")
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        committed_at_kill.append((set(_done_calls(db, run_id)), len(_lines(log))))
        life = Life(loaded, folder, "resume", run_id)
    final = life.finish()
    assert final == reference, f"{run_id}: a resumed program ended in another state than an uninterrupted run"
    lines = _lines(log)
    for committed, upto in committed_at_kill:                      # committed: never made again
        again = [ln for ln in lines[upto:] if ln.startswith("start ") and ln.split()[2] in committed]
        assert not again, again[:3]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM programs WHERE run_id = ? AND status = 'done'",
                           (run_id,)).fetchone()[0] == 8
    return kills


def test_the_worker_runs_as_a_script_too(tmp_path):
    """The kill test's worker, as its own process (python durable_worker.py): one start, one resume."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    args = [PYTHON, str(WORKER), str(tmp_path / "w.db"), str(tmp_path / "w.log")]
    first = subprocess.run([*args, "start", "w"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*args, "resume", "w"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)      # finished programs: reported, not rerun
    assert sum(ln.startswith("start ") for ln in _lines(tmp_path / "w.log")) == 8 * 4   # 1 fetch + 3 probes each


# ------------------------------------------------------------------------------------------ SIGTERM, CLI
WORKFLOW_FILE = '''
import asyncio
from pydantic import BaseModel
from agentrt import Agent, Workflow, tool
from agentrt.engine import SamplingParams

@tool(timeout=60)
async def wait(seconds: float) -> str:
    """Sleep."""
    await asyncio.sleep(seconds)
    return "waited"

class S(BaseModel):
    topic: str = "t"
    plan: str = ""
    note: str = ""
    answer: str = ""

G = SamplingParams(max_tokens=3, ignore_eos=True)
workflow = Workflow("slow", S, output="answer")
workflow.llm("plan", Agent("a", params=G), "Plan {topic}", output="plan")
workflow.tool("pause", wait, {"seconds": 1.5}, output="note")
workflow.llm("answer", Agent("b", params=G), "Answer {plan} {note}", output="answer")
workflow.sequence("plan", "pause", "answer")
'''


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_DATA_HOME": str(cwd / "data")}
    return subprocess.Popen([PYTHON, "-m", "agentrt.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _started_calls(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM tool_calls WHERE status = 'started'").fetchone()[0]
    except sqlite3.OperationalError:                  # not created yet
        return 0


def test_sigterm_stops_a_durable_cli_run_and_agentrt_resume_finishes_it(tmp_path):
    (tmp_path / "slow.py").write_text(WORKFLOW_FILE)
    db = tmp_path / "runs.db"
    proc = _cli("run", "slow.py", "-m", "tiny-random-llama", "-n", "3", "--checkpoint", str(db), "--json", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:                   # wait until all three are in their pause
        if _started_calls(db) == 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    run_id = stderr.split("agentrt resume ")[1].split()[0]
    listed = subprocess.run([PYTHON, "-m", "agentrt.cli", "runs", "show", run_id, "--checkpoint", str(db), "--json"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    shown = json.loads(listed.stdout)
    assert [p["status"] for p in shown["programs"]] == ["cancelled"] * 3
    assert all(p["at"] == "pause" for p in shown["programs"])            # stopped inside the tool step
    resumed = _cli("resume", run_id, "--checkpoint", str(db), "--json", cwd=tmp_path)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["summary"]["done"] == 3 and all(p["output"] for p in report["programs"])
    listing = subprocess.run([PYTHON, "-m", "agentrt.cli", "runs", "list", "--checkpoint", str(db), "--json"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert json.loads(listing.stdout)[0]["programs"] == {"done": 3}


def test_checkpoint_alone_uses_the_user_data_dir(tmp_path):
    (tmp_path / "slow.py").write_text(WORKFLOW_FILE.replace('"seconds": 1.5', '"seconds": 0.01'))
    proc = _cli("run", "slow.py", "-m", "tiny-random-llama", "--checkpoint", "--json", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["summary"]["run_id"].startswith("run-")
    assert (tmp_path / "data" / "agentrt" / "runs.db").is_file()
