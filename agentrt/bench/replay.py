"""`agentrt bench replay`: a TraceLab or Mooncake trace replayed through the engine under each policy.

How a trace program runs (see `agentrt.bench.traces` for the synthetic token ids):
* Rounds go straight to the engine (`AsyncLLMEngine.generate`) with the trace's exact prompt ids,
  greedy, `ignore_eos`, `max_tokens = output_len`; the pause after a round is a sleep. A round's
  prompt holds the trace's synthetic output ids, not what the model generated, so the generated
  blocks are computed and never reused (the same for every policy).
* TraceLab (sessions are programs): the policies see the program structure exactly as they would
  for a real `Program`. Every trace shape (number of rounds) is a small compiled workflow,
  `turn0 -> wait0 -> turn1 -> ... -> turnN-1` (one agent, a `tool_wait` tool whose duration the
  predictor learns online); the replay registers each session in the runtime's program table under
  that workflow and emits the events a Program emits (program_start, step_start/end, llm_start/end,
  tool_start/end, program_end), and its requests carry the program id and arrival (block readers,
  program-order scheduling).
* Mooncake (each request is its own program): no graph information. Requests carry no program id
  and no events reach the policies, so the workflow-aware rankings tie everywhere and fall back to
  recency (LRU), and program order falls back to request order; only the timeline sees events.
The working set (distinct full blocks the replay computes: prompt chains plus generated blocks) and
the longest request are computed from the trace, so the warm-up only warms (its first few programs).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentrt.bench.metrics import Probe, ProgramRecord
from agentrt.bench.traces import Trace, load_mooncake, load_tracelab
from agentrt.bench.workflow_bench import Workload
from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.block_pool import chain_hash
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import ProgramService, RequestMeta
from agentrt.graph import Agent, Workflow
from agentrt.runtime import Event, Runtime
from agentrt.tools import tool

FORMATS = ("tracelab", "mooncake")
AGENT = "agent"
TOOL = "tool_wait"
WARMUP_PROGRAMS = 4


class _ReplayState(BaseModel):
    note: str = ""


@tool(name=TOOL)
async def _tool_wait(seconds: float = 0.0) -> str:
    """A trace's tool pause (the replay sleeps; this stand-in is only the graph's node)."""
    await asyncio.sleep(seconds)
    return ""


def shape_workflow(rounds: int):
    """The compiled graph of a `rounds`-round trace program: turn0 -> wait0 -> ... -> turn{rounds-1}."""
    wf = Workflow(f"replay_{rounds}", _ReplayState, description=f"{rounds} trace rounds with pauses between")
    agent = Agent(AGENT, "")
    names = []
    for i in range(rounds):
        wf.llm(f"turn{i}", agent, "-")
        names.append(f"turn{i}")
        if i < rounds - 1:
            wf.tool(f"wait{i}", _tool_wait, {"seconds": 0.0})
            names.append(f"wait{i}")
    if len(names) > 1:
        wf.sequence(*names)
    return wf.compile()


class _Replayed:
    """What the policies read of a Program: its workflow, submission time, and conversations
    (here the next round's prompt, which is what a prefetch during the pause should bring back)."""
    __slots__ = ("id", "wf", "submitted", "conversations")

    def __init__(self, pid: str, wf, submitted: float):
        self.id, self.wf, self.submitted = pid, wf, submitted
        self.conversations: dict = {}


class _NextPrompt:
    """A conversation whose prompt is known token for token (the trace's next round)."""
    __slots__ = ("ids",)
    messages = (None,)

    def __init__(self, ids: list[int]):
        self.ids = ids

    def prompt_ids(self, tokenizer) -> list[int]:
        return self.ids


def load(path: str | Path, fmt: str, *, scale: float, limit: int | None, speedup: float, vocab: int,
         seed: int = 0) -> Trace:
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such trace file: {path}")
    loader = load_tracelab if fmt == "tracelab" else load_mooncake
    trace = loader(path, scale=scale, limit=limit, speedup=speedup, vocab=vocab, seed=seed)
    if not trace.programs:
        raise ValueError(f"{path}: no {'sessions' if fmt == 'tracelab' else 'requests'} to replay")
    return trace


def trace_footprint(trace: Trace, block_size: int) -> tuple[int, int]:
    """(working set in tokens, longest request in tokens): the distinct full blocks of every
    prompt's chain, plus each round's generated blocks (greedy: equal prompts generate alike)."""
    seen: set = set()
    longest = 0
    for prog in trace.programs:
        for r in prog.rounds:
            ids, parent = r.prompt_tokens, None
            for j in range(len(ids) // block_size):
                parent = chain_hash(parent, tuple(ids[j * block_size:(j + 1) * block_size]))
                seen.add(parent)
            computed = len(ids) + r.output_len - 1            # the last sampled token is never fed back
            for j in range(len(ids) // block_size, computed // block_size):
                seen.add(("gen", parent, len(ids), r.output_len, j))
            longest = max(longest, len(ids) + r.output_len)
    return len(seen) * block_size, longest


def replay_workload(trace: Trace, block_size: int) -> Workload:
    structured = trace.format == "tracelab"
    shapes = {n: shape_workflow(n) for n in sorted({len(p.rounds) for p in trace.programs})} if structured else {}
    working_set, longest = trace_footprint(trace, block_size)
    first_arrival = min(p.rounds[0].arrival_s or 0.0 for p in trace.programs)
    last_arrival = max(p.rounds[0].arrival_s or 0.0 for p in trace.programs) - first_arrival
    count = f"{len(trace.programs)} sessions ({trace.num_requests()} rounds)" if structured else \
        f"{trace.num_requests()} requests"
    describe = f"{count} of {trace.name}"
    notes = [f"trace {trace.name} ({trace.format}): {count}, {trace.total_prompt_tokens()} prompt + "
             f"{trace.total_output_tokens()} output tokens, arrivals over {last_arrival:.1f} s", *trace.notes]
    if not structured:
        notes.append("mooncake: no program or graph information reaches the policies")

    async def drive(engine, policy: str, probe: Probe, warmup: bool = False, options: dict | None = None):
        programs = trace.programs[:WARMUP_PROGRAMS] if warmup else trace.programs
        aengine = AsyncLLMEngine(engine)
        engine.stream_text = False
        rt = Runtime(aengine, policy=policy, **(options or {}))
        probe.attach(rt)
        try:
            start = probe.start()
            records = await asyncio.gather(*(_run_program(rt, aengine, probe, prog, shapes.get(len(prog.rounds)),
                                                          0.0 if warmup else (prog.rounds[0].arrival_s or 0.0)
                                                          - first_arrival, start)
                                             for prog in programs))
            return list(records), time.monotonic() - start
        finally:
            await rt.close()
            await aengine.close()

    return Workload(trace.format, len(trace.programs), describe, drive, notes, working_set, longest)


async def _run_program(rt: Runtime, aengine: AsyncLLMEngine, probe: Probe, prog, wf, arrival: float,
                       start: float) -> ProgramRecord:
    """One trace program: its rounds in order, pauses between them, events as a Program's."""
    delay = arrival - (time.monotonic() - start)
    if delay > 0:
        await asyncio.sleep(delay)
    pid, submitted, service = prog.program_id, time.monotonic(), ProgramService()
    structured = wf is not None

    def emit(_kind: str, **data: Any) -> None:
        if structured:
            rt.emit(Event(time.monotonic() - rt.t0, pid, _kind, data))
        else:
            probe(Event(time.monotonic() - rt.t0, pid, _kind, data))

    if structured:
        rt.programs[pid] = _Replayed(pid, wf, submitted)
    tokens_in = tokens_out = cached = calls = 0
    status, error = "done", None
    emit("program_start", workflow=wf.name if structured else "request", state=None)
    try:
        for i, r in enumerate(prog.rounds):
            step, rid, t = f"turn{i}", f"{pid}/turn{i}", time.monotonic()
            emit("step_start", step=step, kind="llm", agent=AGENT, tool=None, lane=None)
            emit("llm_start", step=step, agent=AGENT, request_id=rid, tokens_in=len(r.prompt_tokens), turn=0)
            meta = RequestMeta(pid, AGENT, step, {"turn": 0, "program_arrival": submitted,
                                                  "program_service": service}) if structured else None
            out = await aengine.generate(r.prompt_tokens, SamplingParams(max_tokens=r.output_len, ignore_eos=True),
                                         meta=meta, request_id=rid)
            calls, tokens_in, tokens_out = calls + 1, tokens_in + len(r.prompt_tokens), tokens_out + len(out.token_ids)
            cached += out.num_cached_tokens
            emit("llm_end", step=step, agent=AGENT, request_id=rid, tokens_in=len(r.prompt_tokens),
                 tokens_out=len(out.token_ids), cached_tokens=out.num_cached_tokens,
                 finish_reason=out.finish_reason, turn=0)
            emit("step_end", step=step, duration=round(time.monotonic() - t, 6), lane=None)
            if i == len(prog.rounds) - 1:
                break
            step, t = f"wait{i}", time.monotonic()
            if structured:
                rt.programs[pid].conversations[AGENT, ""] = _NextPrompt(prog.rounds[i + 1].prompt_tokens)
            emit("step_start", step=step, kind="tool", agent=None, tool=TOOL, lane=None)
            emit("tool_start", step=step, tool=TOOL, expected_duration=None, arguments={"seconds": r.pause_after_s})
            await asyncio.sleep(r.pause_after_s)
            emit("tool_end", step=step, tool=TOOL, duration=round(time.monotonic() - t, 6), attempts=1, error=None)
            emit("step_end", step=step, duration=round(time.monotonic() - t, 6), lane=None)
    except Exception as exc:                     # one failing program must not void the others' figures
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        emit("error", message=error)
    finally:
        jct = time.monotonic() - submitted
        emit("program_end", status=status, error=error, jct=round(jct, 6))
        rt.programs.pop(pid, None)
    return ProgramRecord(pid, status, submitted - start, jct, calls, tokens_in, tokens_out, cached, error)
