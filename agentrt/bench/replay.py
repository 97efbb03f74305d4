"""`agentrt bench replay`: a TraceLab or Mooncake trace replayed through the engine under each policy.

How a trace program runs (see `agentrt.bench.traces` for the synthetic token ids):
* Rounds go straight to the engine (`AsyncLLMEngine.generate`) with the trace's exact prompt ids,
  greedy, `ignore_eos`, `max_tokens = output_len`; the pause after a round is a sleep. A round's
  prompt holds the trace's synthetic output ids, not what the model generated, so the generated
  blocks are computed and never reused (the same for every policy).
* TraceLab (sessions are programs): the replay is a front of its own. It tells the scheduler's
  front door (`WorkflowScheduler`) what each session does with the same typed events a Program
  sends, with the session's shape as its graph: every trace shape (number of rounds) is a small
  compiled workflow, `turn0 -> wait0 -> turn1 -> ... -> turnN-1` (one agent, a `tool_wait` tool
  whose duration the predictor learns online), and the next round's prompt as what a prefetch
  during the pause should bring back. Its requests carry the program id and arrival (block
  readers, program-order scheduling).
* Mooncake (each request is its own program): no graph information. Requests carry no program id
  and no events reach the policies, so the workflow-aware rankings tie everywhere and fall back to
  recency (LRU), and program order falls back to request order; only the timeline sees events.
The working set (distinct full blocks the replay computes: prompt chains plus generated blocks) and
the longest request are computed from the trace, so the warm-up only warms (its first few programs).
"""
from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentrt.bench.metrics import Probe, ProgramRecord
from agentrt.bench.traces import Trace, load_mooncake, load_tracelab
from agentrt.bench.workflow_bench import Workload
from agentrt.clock import VirtualClock
from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.block_pool import chain_hash
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import RequestMeta
from agentrt.graph import Agent, Workflow
from agentrt.runtime import Event
from agentrt.sched.events import (LLMCallEnded, LLMCallStarted, ProgramEnded, ProgramStarted, StepEnded,
                                  StepStarted, ToolEnded, ToolStarted)
from agentrt.sched.front import WorkflowScheduler
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


class NextRound:
    """A replayed session's prompt source: the agent will send the trace's next round, token for
    token (None before the first pause)."""
    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: list[int] | None = None

    def prompts_of(self, agents: Collection[str]) -> list[list[int]]:
        return [self.ids] if self.ids is not None and AGENT in agents else []


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
        options = dict(options or {})
        if options.pop("checkpoint", None) is not None:
            raise ValueError("a trace replay has no durable programs: drop +ckpt from --policies")
        aengine = AsyncLLMEngine(engine, inline=isinstance(engine.clock, VirtualClock))
        engine.stream_text = False
        door = WorkflowScheduler(policy, kv=aengine.kv_spec, clock=aengine.clock, **options, meter=probe.meter,
                                 prefetch=lambda ids: aengine.prefetch(ids, evict=True))
        aengine.install_policy(door.engine_policy)
        probe.watch(door)
        try:
            probe.start()
            records = await asyncio.gather(*(_run_program(door if structured else None, aengine, probe, prog,
                                                          shapes.get(len(prog.rounds)),
                                                          0.0 if warmup else (prog.rounds[0].arrival_s or 0.0)
                                                          - first_arrival)
                                             for prog in programs))
            return list(records), probe.now()
        finally:
            await aengine.close()

    return Workload(trace.format, len(trace.programs), describe, drive, notes, working_set, longest)


async def _run_program(door: WorkflowScheduler | None, aengine: AsyncLLMEngine, probe: Probe, prog, wf,
                       arrival: float) -> ProgramRecord:
    """One trace program: its rounds in order, pauses between them; typed events to the scheduler
    (structured traces only) and the timeline's events to the probe."""
    delay = arrival - probe.now()
    if delay > 0:
        await asyncio.sleep(delay)
    clock, pid = aengine.clock, prog.program_id
    submitted = clock.now()
    publish = door.publish if door is not None else (lambda event: None)

    def show(_kind: str, **data: Any) -> None:
        probe(Event(probe.now(), pid, _kind, data))

    next_round = NextRound()
    tokens_in = tokens_out = cached = calls = 0
    status, error = "done", None
    publish(ProgramStarted(pid, submitted, submitted, wf.analysis if wf is not None else None, next_round))
    try:
        for i, r in enumerate(prog.rounds):
            step, rid = f"turn{i}", f"{pid}/turn{i}"
            publish(StepStarted(pid, step, clock.now()))
            publish(LLMCallStarted(pid, rid, AGENT, step, len(r.prompt_tokens), clock.now()))
            show("llm_start", request_id=rid)
            meta = RequestMeta(pid, AGENT, step, submitted) if door is not None else None
            out = await aengine.generate(r.prompt_tokens, SamplingParams(max_tokens=r.output_len, ignore_eos=True),
                                         meta=meta, request_id=rid)
            calls, tokens_in, tokens_out = calls + 1, tokens_in + len(r.prompt_tokens), tokens_out + len(out.token_ids)
            cached += out.num_cached_tokens
            publish(LLMCallEnded(pid, rid, AGENT, step, len(r.prompt_tokens), len(out.token_ids),
                                 out.num_cached_tokens, clock.now()))
            show("llm_end", request_id=rid, tokens_in=len(r.prompt_tokens), tokens_out=len(out.token_ids))
            publish(StepEnded(pid, step, clock.now()))
            if i == len(prog.rounds) - 1:
                break
            step, t = f"wait{i}", clock.now()
            next_round.ids = prog.rounds[i + 1].prompt_tokens
            publish(StepStarted(pid, step, t))
            publish(ToolStarted(pid, TOOL, step, t))
            show("tool_start", tool=TOOL)
            await asyncio.sleep(r.pause_after_s)
            publish(ToolEnded(pid, TOOL, step, clock.now(), clock.now() - t))
            show("tool_end", tool=TOOL)
            publish(StepEnded(pid, step, clock.now()))
    except Exception as exc:                     # one failing program must not void the others' figures
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        publish(ProgramEnded(pid, status, clock.now()))
        aengine.end_program(pid)
        show("program_end")
    return ProgramRecord(pid, status, submitted - probe.t0, clock.now() - submitted, calls, tokens_in, tokens_out,
                         cached, error)
