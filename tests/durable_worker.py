"""A durable run in a process of its own, for the kill tests (tests/test_durable.py).

    python durable_worker.py DB LOG start RUN_ID     # a new run of 8 programs
    python durable_worker.py DB LOG resume RUN_ID    # continue it

or `fork_worker(...)`: the same in a forked child of a process that has already imported torch
and built the model (no start-up cost: what lets the test kill it at 20+ points quickly).

The workflow (tiny model, greedy) has tools with side effects: each execution appends
"start <key>" and "end <key>" to LOG (its idempotency key), with a pause between them. Before a
checkpoint write commits, the store appends "write" to LOG and pauses too, so a test can kill
the process inside a tool call, inside a fan-out or inside a checkpoint write. At the end it
prints one JSON line: every program's status and final state.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Annotated

from pydantic import BaseModel

os.environ.setdefault("OMP_NUM_THREADS", "1")

from agentrt import END, Agent, Runtime, Workflow, append, tool  # noqa: E402
from agentrt.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from agentrt.engine.loader import load_model  # noqa: E402
from agentrt.runtime.checkpoint import CheckpointStore  # noqa: E402
from agentrt.tools import current_call  # noqa: E402

PAUSE = float(os.environ.get("DURABLE_PAUSE", "0.03"))
LOG = None                                    # set by run_worker: where tools and writes are noted


def note(line: str) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def effect(kind: str, value: str) -> str:
    key = current_call().key
    note(f"start {kind} {key}")
    time.sleep(PAUSE)
    note(f"end {kind} {key}")
    return f"{kind}({value})"


@tool(timeout=60)
def fetch(topic: str) -> str:
    """Fetch facts (a side effect counted in LOG)."""
    return effect("fetch", topic)


@tool(timeout=60)
def probe(item: str) -> str:
    """Probe one item, inside the fan-out."""
    return effect("probe", item)


class Job(BaseModel):
    topic: str = ""
    plan: str = ""
    facts: str = ""
    items: list[str] = ["a", "b", "c"]
    notes: Annotated[list[str], append] = []
    report: str = ""
    rounds: int = 0


def G(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)


def build():
    wf = Workflow("durable_job", Job, output="report")
    wf.llm("plan", Agent("planner", params=G(4)), "Plan {topic}.", output="plan")
    wf.tool("fetch", fetch, {"topic": "{topic}"}, output="facts")
    wf.python("split", lambda s: None)
    wf.tool("probe", probe, {"item": "{it}"}, output="probed")
    worker = Agent("worker", params=G(3))
    wf.llm("note", worker, "Note {it}: {probed} {facts}", output="notes")
    wf.llm("merge", Agent("merger", params=G(4)), "Merge {notes}", output="report")
    wf.python("count", lambda s: {"rounds": s.rounds + 1})
    wf.sequence("plan", "fetch", "split")
    wf.fan_out("split", over="items", to="probe", join="merge", item="it")
    wf.edge("probe", "note")
    wf.edge("merge", "count")
    wf.branch("count", lambda s: "merge", to=["merge", END], max_loops=1)
    return wf.compile()


class SlowStore(CheckpointStore):
    """Pauses inside every step write, after the update and before the commit."""

    def _write_step(self, db, run_id, program_id, text, steps) -> None:
        super()._write_step(db, run_id, program_id, text, steps)
        note("write")
        time.sleep(PAUSE)


async def run_worker(db: str, log: str, mode: str, run_id: str, loaded=None) -> dict:
    """Start (mode "start") or resume the run; every program's status and final state."""
    global LOG
    LOG = log
    loaded = loaded or load_model("tiny-random-llama", seed=0)
    engine = LLMEngine(loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096))
    wf = build()
    async with Runtime(engine, checkpoint=SlowStore(db), run_id=run_id, policy="agentrt") as rt:
        if mode == "start":
            results = await rt.run_many(wf, [{"topic": f"topic {i}"} for i in range(8)])
        else:
            results = await rt.resume(run_id, wf)
    return {r.program_id: [r.status, r.state.model_dump(mode="json") if r.status == "done" else r.error]
            for r in results}


def fork_worker(db: str, log: str, mode: str, run_id: str, out: str, loaded) -> int:
    """The run in a forked child (its pid): it writes its result as JSON to `out` and exits 0,
    or writes the traceback there and exits 1."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        result = asyncio.run(run_worker(db, log, mode, run_id, loaded))
        with open(out, "w", encoding="utf-8") as f:
            json.dump(result, f)
        code = 0
    except BaseException:
        import traceback
        with open(out, "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_worker(*sys.argv[1:5]))))
