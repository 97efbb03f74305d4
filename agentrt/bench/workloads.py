"""The workloads `agentrt bench workflows` runs: fixed-shape programs of the project's workflows
(research_team, coding_agent, agent_pipeline), SWE-agent episodes (agentrt.bench.swe), and the
driver that submits them to a Runtime at their arrival times."""
from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrt.bench.metrics import Probe, ProgramRecord
from agentrt.clock import VirtualClock
from agentrt.engine import LLMEngine
from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.runtime import Runtime
from agentrt.sched.front import WorkflowScheduler

WORKLOADS = ("research_team", "coding_agent", "swe_agent", "agent_pipeline")
TOOL_LATENCY_FILE = "tracelab_claude_session_rounds.jsonl"
WORDS = ("amber river lattice copper glacier orbit meadow cipher harbor falcon quartz ember tundra "
         "signal mosaic canyon pollen vector lantern basalt comet delta fjord garnet horizon island "
         "juniper kelp lagoon magnet nebula oasis prism quill reef saffron tide umber violet willow "
         "yarrow zephyr anchor beacon cedar dune echo fern grove helix ivory jade kiln lichen marble").split()


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Arrival times (s) of n programs: a Poisson process at `rate`/s starting at 0, or all at 0."""
    if rate < 0:
        raise ValueError(f"rate must be >= 0 (0: all programs at once), got {rate}")
    if rate == 0:
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Workload:
    """What the harness runs: `drive(engine, policy, probe)` runs every program once and returns
    their records and the wall time (from the first arrival to the last end)."""
    name: str
    programs: int
    describe: str
    drive: Callable[..., Any]
    notes: list[str] = field(default_factory=list)
    known_working_set_tokens: int | None = None     # replay: computed from the trace (warm-up only warms)
    known_longest_request: int | None = None
    # each program is one growing conversation (agentrt.bench.floor holds): its tool pauses, by program id
    conversation_pauses: dict[str, list[float]] | None = None


# ------------------------------------------------------------------------------------------ workflows
def _workflow_module(name: str):
    """workflows/<name>.py from the project root (they are files, not part of the package)."""
    path = Path(__file__).resolve().parents[2] / "workflows" / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the workflow benchmarks need the project's workflows/ folder")
    spec = importlib.util.spec_from_file_location(f"agentrt_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tool_latencies() -> tuple[list[float], str]:
    """Real tool-call wall latencies (s) from the TraceLab round trace, all tools pooled."""
    from agentrt.bench.traces import workloads_dir
    from agentrt.sched.predictor import load_tracelab_tool_latencies
    folder = workloads_dir()
    if folder is not None and (folder / TOOL_LATENCY_FILE).is_file():
        lat = load_tracelab_tool_latencies(folder / TOOL_LATENCY_FILE)
        values = sorted(x for v in lat.values() for x in v)
        return values, f"tool pauses drawn from {len(values)} real tool latencies ({TOOL_LATENCY_FILE})"
    values = [0.06, 0.08, 0.14, 0.19, 0.86, 1.18, 2.5, 5.0, 12.7, 16.1]
    return values, f"{TOOL_LATENCY_FILE} not found (../shared/workloads): built-in latency sample used"


def workflow_workload(name: str, programs: int, rate: float, seed: int, *, output_tokens: int | None = None,
                      rounds: int | None = None, speedup: float = 1.0, scale: float = 1.0,
                      pipelines: int = 1) -> Workload:
    """Many concurrent fixed-shape programs of `name` (research_team, coding_agent or
    agent_pipeline: its prompt lengths times `scale`, `pipelines` kinds of pipeline with agents'
    prompts of their own, program i of kind i mod `pipelines`)."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if programs < 1 or speedup <= 0:
        raise ValueError("need --programs >= 1 and --speedup > 0")
    arrivals = poisson_arrivals(programs, rate, seed)
    rng = random.Random(seed)
    notes = [f"arrivals: {'all at once' if rate == 0 else f'Poisson, {rate:g} programs/s (seed {seed})'}"]
    module = _workflow_module(name)
    if name == "research_team":
        out = output_tokens or 48
        wf = module.build(fixed_shape=True, researchers=3, output_tokens=out, search_seconds=0.5 / speedup,
                          review_rounds=rounds if rounds is not None else 1)
        inputs = [{"topic": f"Topic {i}: {words(rng, 6)}?"} for i in range(programs)]
        pauses: dict[str, list[float]] = {}
        describe = f"{programs} research_team programs (3 researchers, {out} tokens per turn)"
    elif name == "agent_pipeline":
        out, agents = output_tokens or 64, rounds or 10
        shared, own = round(1000 * scale), round(2000 * scale)
        if pipelines < 1:
            raise ValueError(f"--pipelines must be >= 1, got {pipelines}")
        kinds = [module.build(agents=agents, shared_tokens=shared, agent_tokens=own, output_tokens=out,
                              tool_seconds=0.5 / speedup, variant=k).compile() for k in range(pipelines)]
        inputs = [{"task": f"Job {i}: {words(rng, round(200 * scale))}"} for i in range(programs)]
        pauses = {}
        describe = (f"{programs} agent_pipeline programs ({agents} agents, prompts of a {shared}-word shared prefix "
                    f"+ {own} words each, {out} tokens per turn" +
                    (f"; {pipelines} kinds of pipeline, {pipelines * agents} agents' prompts)" if pipelines > 1
                     else ")"))
        drive = program_driver([kinds[i % pipelines] for i in range(programs)], inputs, arrivals)
        return Workload(name, programs, describe, drive, notes)
    else:
        out, n_rounds = output_tokens or 32, rounds or 4
        latencies, source = tool_latencies()
        notes.append(source + (f", compressed {speedup:g}x" if speedup != 1 else ""))
        pauses = {f"p{i}": [rng.choice(latencies) / speedup for _ in range(n_rounds)] for i in range(programs)}
        current: dict[str, list[float]] = {}

        def draw() -> float:
            from agentrt.runtime import current_program
            return current[current_program().id].pop(0)
        wf = module.build(fixed_shape=True, rounds=n_rounds, output_tokens=out, tool_seconds=draw)
        inputs = [{"task": f"Task {i}: write a function named {words(rng, 1)}_{i} that sorts {words(rng, 5)}."}
                  for i in range(programs)]
        describe = f"{programs} coding_agent programs ({n_rounds} rounds, {out} tokens per turn)"
    def same_pauses() -> None:             # coding_agent: the same pauses, program by program, for every policy
        current.clear()
        current.update({pid: list(seq) for pid, seq in pauses.items()})
    drive = program_driver(wf.compile(), inputs, arrivals, before=same_pauses if name == "coding_agent" else None)
    return Workload(name, programs, describe, drive, notes)


def program_driver(compiled, inputs: list[dict], arrivals: list[float], *, before: Callable[[], None] | None = None,
                   ids: list[str] | None = None):
    """`Workload.drive` for programs of one compiled workflow (or a list: program i's own): program
    i (id `ids[i]`, else p{i}) arrives at `arrivals[i]` with `inputs[i]`; `before()` runs at the
    start of every run."""
    ids = ids or [f"p{i}" for i in range(len(inputs))]
    graphs = compiled if isinstance(compiled, list) else [compiled] * len(inputs)

    async def drive(engine: LLMEngine, policy: str, probe: Probe, warmup: bool = False, options: dict | None = None):
        if before is not None:
            before()
        aengine = AsyncLLMEngine(engine, inline=isinstance(engine.clock, VirtualClock))
        engine.stream_text = False          # text is only needed at the end of a turn
        opts = dict(options or {})
        door = WorkflowScheduler(policy, kv=engine.kv_spec, prefetch=lambda ids: aengine.prefetch(ids, evict=True),
                                 clock=engine.clock, order=opts.pop("order", None),
                                 max_programs=opts.pop("max_programs", None), batch_cap=opts.pop("batch_cap", None),
                                 meter=probe.meter)
        rt = Runtime(aengine, scheduler=door, **opts)
        probe.attach(rt)
        try:
            probe.start()

            async def one(i: int) -> ProgramRecord:
                delay = arrivals[i] - probe.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                submitted = probe.now()
                r = await rt.submit(graphs[i], inputs[i], program_id=ids[i]).result()
                return ProgramRecord(r.program_id, r.status, submitted, r.jct, r.llm_calls, r.tokens_in,
                                     r.tokens_out, r.cached_tokens, r.error)
            records = await asyncio.gather(*(one(i) for i in range(len(inputs))))
            return list(records), probe.now()
        finally:
            await rt.close()
            await aengine.close()
    return drive


def parse_range(text: str, option: str) -> tuple[int, int]:
    """'20-60' (or '30') as (20, 60)."""
    lo, _, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{option} takes LO-HI, e.g. 20-60; got {text!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"{option} {text}: need 1 <= LO <= HI")
    return low, high


def workload_from_settings(s: dict[str, Any]) -> Workload:
    """The workload a `bench workflows` report's settings describe (the same programs again)."""
    if s["workload"] == "swe_agent":
        from agentrt.bench.swe import SweShape
        lo, hi = parse_range(s.get("turns", "20-60"), "--turns")
        return swe_workload(SweShape(s["programs"], s["rate"], s["seed"], s.get("scale", 1.0), s["speedup"], lo, hi))
    return workflow_workload(s["workload"], s["programs"], s["rate"], s["seed"], output_tokens=s.get("output_tokens"),
                             rounds=s.get("rounds"), speedup=s["speedup"], scale=s.get("scale", 1.0),
                             pipelines=s.get("pipelines", 1))


def swe_workload(shape) -> Workload:
    """`shape.programs` SWE-agent episodes (agentrt.bench.swe) of workflows/swe_agent.py."""
    from agentrt.bench.swe import summary, swe_programs, tool_calls
    module = _workflow_module("swe_agent")
    episodes = swe_programs(shape)
    facts = summary(episodes)
    inputs = [module.program_input(p) for p in episodes]
    notes = [tool_calls()[1] + (f", divided by {shape.time_scale:g}" if shape.time_scale != 1 else ""),
             f"arrivals: {'all at once' if shape.rate == 0 else f'Poisson, {shape.rate:g} programs/s (seed {shape.seed})'}",
             f"{facts['turns']} turns; {facts['calls_under_1s']:.0%} of tool calls under 1 s, "
             f"{facts['tool_time_in_calls_over_1s']:.0%} of tool time in calls of 1 s or more (longest "
             f"{facts['max_tool_seconds']:.1f} s)"]
    describe = (f"{len(episodes)} swe_agent programs ({shape.min_turns}-{shape.max_turns} turns, scale {shape.scale:g}, "
                f"~{facts['mean_context_tokens']:,.0f} words of final context, up to {facts['max_context_tokens']:,})")
    drive = program_driver(module.build(shape=shape).compile(), inputs, [p.arrival_s for p in episodes],
                           ids=[p.program_id for p in episodes])
    pauses = {p.program_id: [t.tool_seconds for t in p.turns] for p in episodes}
    return Workload("swe_agent", len(episodes), describe, drive, notes, conversation_pauses=pauses)
